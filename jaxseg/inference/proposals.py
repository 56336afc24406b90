"""Object proposals for DeconvNet's instance-wise inference: reading, computing, selecting windows.

Boxes everywhere in jaxseg are float32 rows (x0, y0, x1, y1, score) in 0-based pixel coordinates
of the image, x1/y1 INCLUSIVE (the box's last column and row: width x1 - x0 + 1), higher score =
better. `select_windows` turns them into the fixed-size int32 windows (y0, x0, y1, x1),
end-exclusive, that `jaxseg.inference.instancewise` runs the network on.

Proposal files (`read_proposals(path)`):
  folder/<id>.txt    one box per line, "x0 y0 x1 y1 score" (whitespace or commas), jaxseg's
                     convention above; a 4-column line (no score) is allowed when every line of
                     the file has 4 columns: the file order is then the score order. Blank lines
                     and lines starting with '#' are skipped.
  folder/<id>.npy    a float array (N, 5) or (N, 4) with the same columns.
  folder/<id>.mat    MATLAB files, either
                       `boxes_padded`: DeconvNet's cached EdgeBoxes windows
                       (data/edgebox_cached/VOC2012_TEST/<id>.mat of the original), 1-based
                       [x1 y1 x2 y2] inclusive in the coordinates of the image padded by
                       padarray(I, [width, height]) (rows padded by the image WIDTH, columns by
                       its HEIGHT, as inference/generate_EDeconvNet_CRF_results.m writes it),
                       already enlarged for context: converted back with x0 = x1 - 1 - height,
                       y0 = y1 - 1 - width (x1 = x2 - 1 - height, y1 = y2 - 1 - width) and scored
                       by file order (the script processes them in file order), so select them
                       with context=1.0;
                       `bbs`: Piotr Dollar's EdgeBoxes output (edgeBoxes.m / edgeBoxesMex.cpp),
                       [x y w h score] with 1-based (x, y), covering w x h pixels: x0 = x - 1,
                       x1 = x0 + w - 1 (the usual [x, x + w) reading of bbGt/bbApply).
                     Saved with MATLAB -v7 or older (-v7.3 HDF5 files are not read).
  file.npz           one array per image id (as folder/<id>.npy).
  file.json          {"<id>": [[x0, y0, x1, y1, score], ...], ...}.

`compute_proposals` computes boxes with OpenCV contrib (cv2.ximgproc): selective search in its
'fast' mode, or EdgeBoxes with a structured-edge model file the user gives. Nothing is
downloaded.

The paper (Noh et al. 2015, sec. 4.3, 5.1): about 2,000 EdgeBoxes proposals per image, the top 50
by objectness; training windows are the boxes enlarged 1.2x about their centre.
"""
import json
import os
from typing import Any

from etils import epath
import numpy as np
import scipy.io

FOLDER_SUFFIXES = ('.txt', '.npy', '.mat')
METHODS = ('selective_search', 'edgeboxes')


# ----------------------------------------------------------------------------------------- reading
def _by_file_order(coords: np.ndarray) -> np.ndarray:
  """(N, 4) -> (N, 5) with scores N, N-1, ..., 1: the file order is the score order."""
  n = len(coords)
  scores = np.arange(n, 0, -1, dtype=np.float32)[:, None]
  return np.concatenate([np.asarray(coords, np.float32).reshape(n, 4), scores], axis=1)


def _check_array(boxes: Any, where: str) -> np.ndarray:
  """A (N, 5) float32 box array from (N, 4)/(N, 5) numbers; ValueError naming `where`."""
  try:
    arr = np.asarray(boxes, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{where}: boxes must be numbers (rows x0 y0 x1 y1 score): {e}') from e
  if arr.size == 0:
    return np.zeros((0, 5), np.float32)
  if arr.ndim != 2 or arr.shape[1] not in (4, 5):
    raise ValueError(f'{where}: boxes must be an (N, 5) array of rows x0 y0 x1 y1 score (or '
                     f'(N, 4) in score order); got shape {arr.shape}')
  if not np.all(np.isfinite(arr)):
    row = int(np.nonzero(~np.all(np.isfinite(arr), axis=1))[0][0])
    raise ValueError(f'{where}: row {row} is not finite: {arr[row].tolist()}')
  if arr.shape[1] == 4:
    return _by_file_order(arr)
  return arr.astype(np.float32)


def _read_txt(path: epath.Path) -> np.ndarray:
  rows, widths = [], set()
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    text = line.strip()
    if not text or text.startswith('#'):
      continue
    fields = text.replace(',', ' ').split()
    try:
      values = [float(f) for f in fields]
    except ValueError:
      raise ValueError(f'{path}:{number}: expected numbers "x0 y0 x1 y1 score", got '
                       f'{line!r}') from None
    if len(values) not in (4, 5) or not all(np.isfinite(values)):
      raise ValueError(f'{path}:{number}: expected 5 finite numbers "x0 y0 x1 y1 score" (or 4 '
                       f'on every line), got {line!r}')
    rows.append(values)
    widths.add(len(values))
  if len(widths) > 1:
    raise ValueError(f'{path}: lines mix 4 and 5 columns; give every line a score, or none')
  return _check_array(rows, str(path))


def _read_npy(path: epath.Path) -> np.ndarray:
  with path.open('rb') as f:
    try:
      arr = np.load(f, allow_pickle=False)
    except ValueError as e:
      raise ValueError(f'{path}: not a readable .npy array: {e}') from e
  return _check_array(arr, str(path))


def _load_mat(path: epath.Path) -> dict[str, Any]:
  with path.open('rb') as f:
    try:
      return scipy.io.loadmat(f)
    except NotImplementedError as e:  # MATLAB -v7.3 (HDF5).
      raise ValueError(f'{path}: MATLAB -v7.3 files are not read; re-save it in MATLAB with '
                       "save(..., '-v7')") from e
    except ValueError as e:
      raise ValueError(f'{path}: not a readable MATLAB .mat file: {e}') from e


def mat_boxes(mat: dict[str, Any], image_hw: tuple[int, int], where: str) -> np.ndarray:
  """Boxes (N, 5) of a loaded .mat file: DeconvNet's `boxes_padded` or EdgeBoxes' `bbs`."""
  height, width = (int(v) for v in image_hw)
  if 'boxes_padded' in mat:
    arr = np.asarray(mat['boxes_padded'], np.float64)
    if arr.size == 0:
      return np.zeros((0, 5), np.float32)
    if arr.ndim != 2 or arr.shape[1] < 4:
      raise ValueError(f'{where}: boxes_padded must be (N, 4) [x1 y1 x2 y2]; got {arr.shape}')
    # generate_EDeconvNet_CRF_results.m: padded_I = padarray(I, [img_width, img_height]), so
    # padded column c (1-based) is image column c - img_height, padded row r is row r - img_width.
    offset = np.asarray([height + 1, width + 1, height + 1, width + 1], np.float64)
    return _check_array(_by_file_order(arr[:, :4] - offset), where)
  if 'bbs' in mat:
    arr = np.asarray(mat['bbs'], np.float64)
    if arr.size == 0:
      return np.zeros((0, 5), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 5:
      raise ValueError(f'{where}: bbs must be EdgeBoxes (N, 5) [x y w h score]; got {arr.shape}')
    x0, y0 = arr[:, 0] - 1, arr[:, 1] - 1
    rows = np.stack([x0, y0, x0 + arr[:, 2] - 1, y0 + arr[:, 3] - 1, arr[:, 4]], axis=1)
    return _check_array(rows, where)
  names = sorted(k for k in mat if not k.startswith('__'))
  raise ValueError(f'{where}: no variable boxes_padded (DeconvNet\'s cache) or bbs (EdgeBoxes); '
                   f'the file holds {names}')


class Proposals:
  """Boxes per image id from a proposals folder or file (see the module docstring).

  `proposals.boxes(image_id, (height, width))` (or calling the object) returns float32 (N, 5) rows
  (x0, y0, x1, y1, score) in image coordinates, x1/y1 inclusive. The image size is needed for
  DeconvNet's `boxes_padded`, whose coordinates are those of the padded image.
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = epath.Path(path)
    if not self.path.exists():
      raise FileNotFoundError(f'proposals path {self.path} does not exist; give a folder of '
                              '<id>.txt/.npy/.mat files or one .npz/.json file')
    self._table: dict[str, np.ndarray] | None = None
    if self.path.is_dir():
      return
    suffix = self.path.suffix.lower()
    if suffix == '.npz':
      with self.path.open('rb') as f, np.load(f, allow_pickle=False) as data:
        self._table = {key: _check_array(data[key], f'{self.path}[{key!r}]') for key in data.files}
    elif suffix == '.json':
      try:
        data = json.loads(self.path.read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f'{self.path}: not valid JSON: {e}') from e
      if not isinstance(data, dict):
        raise ValueError(f'{self.path}: expected an object {{"<image id>": [[x0, y0, x1, y1, '
                         f'score], ...]}}, got {type(data).__name__}')
      self._table = {str(key): _check_array(rows, f'{self.path}[{key!r}]')
                     for key, rows in data.items()}
    else:
      raise ValueError(f'proposals file {self.path} must be a folder, a .npz or a .json file')

  def boxes(self, image_id: str, image_hw: tuple[int, int]) -> np.ndarray:
    """float32 (N, 5) boxes (x0, y0, x1, y1, score) of one image."""
    image_id = str(image_id)
    if self._table is not None:
      if image_id not in self._table:
        raise ValueError(f'{self.path} holds no proposals for image id {image_id!r} '
                         f'({len(self._table)} ids in the file)')
      return self._table[image_id]
    found = [self.path / f'{image_id}{s}' for s in FOLDER_SUFFIXES
             if (self.path / f'{image_id}{s}').exists()]
    if not found:
      raise FileNotFoundError(f'no proposals for image id {image_id!r}: expected '
                              f'{self.path / image_id}.txt, .npy or .mat')
    if len(found) > 1:
      raise ValueError(f'image id {image_id!r} has several proposal files {[str(p) for p in found]}'
                       '; keep one')
    path = found[0]
    if path.suffix == '.txt':
      return _read_txt(path)
    if path.suffix == '.npy':
      return _read_npy(path)
    return mat_boxes(_load_mat(path), image_hw, str(path))

  __call__ = boxes


def read_proposals(path: str | os.PathLike[str]) -> Proposals:
  """The proposals of a folder or .npz/.json file: `boxes(image_id, (height, width))`."""
  return Proposals(path)


# --------------------------------------------------------------------------------------- computing
def _ximgproc() -> Any:
  import cv2  # pylint: disable=g-import-not-at-top
  if not hasattr(cv2, 'ximgproc'):
    raise ImportError('object proposals need OpenCV contrib (cv2.ximgproc); this cv2 '
                      f'{cv2.__version__} lacks it: pip install "jaxseg[proposals]" (and '
                      'uninstall opencv-python / opencv-python-headless, which shadow it)')
  return cv2


def _xywh_rows(rects: np.ndarray, scores: np.ndarray) -> np.ndarray:
  rects = np.asarray(rects, np.float32).reshape(-1, 4)
  x0, y0 = rects[:, 0], rects[:, 1]
  return np.stack([x0, y0, x0 + rects[:, 2] - 1, y0 + rects[:, 3] - 1,
                   np.asarray(scores, np.float32).reshape(-1)], axis=1)


def compute_proposals(image: np.ndarray, method: str = 'selective_search', max_boxes: int = 2000,
                      model_path: str | os.PathLike[str] | None = None) -> np.ndarray:
  """Object proposals (N <= max_boxes, 5) of one uint8 RGB image (H, W, 3), best first.

  'selective_search': cv2.ximgproc.segmentation selective search (Uijlings et al. 2013) in
    OpenCV's fast mode (switchToSelectiveSearchFast with its defaults). OpenCV returns its boxes
    in its rank order and no score: the score is that rank, 1 - i / N for the i-th box (0-based).
  'edgeboxes': EdgeBoxes (Zitnick & Dollar 2014; the paper's proposals) with OpenCV's defaults
    on the edges of a structured-edge model: `model_path` names the model file the user has
    (e.g. OpenCV's model.yml.gz of the structured-edge sample); the scores are EdgeBoxes'.
  Boxes are clipped to the image.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'compute_proposals needs a uint8 RGB image (H, W, 3); got {image.dtype} '
                     f'{image.shape}')
  if max_boxes < 1:
    raise ValueError(f'max_boxes {max_boxes} must be >= 1')
  if method not in METHODS:
    raise ValueError(f'unknown proposal method {method!r}; use one of {METHODS}')
  cv2 = _ximgproc()
  height, width = image.shape[:2]
  if method == 'selective_search':
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR.
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process()).reshape(-1, 4)[:max_boxes]
    n = len(rects)
    boxes = _xywh_rows(rects, 1.0 - np.arange(n, dtype=np.float32) / max(n, 1))
  else:
    if model_path is None:
      raise ValueError("method='edgeboxes' needs model_path, a structured-edge model file "
                       '(e.g. model.yml.gz of opencv_extra/testdata/cv/ximgproc); none is '
                       'downloaded')
    model = epath.Path(model_path)
    if not model.is_file():
      raise FileNotFoundError(f'structured-edge model {model} does not exist')
    detector = cv2.ximgproc.createStructuredEdgeDetection(os.fspath(model))
    edges = detector.detectEdges(image.astype(np.float32) / 255.0)  # It reads RGB in [0, 1].
    orientation = detector.computeOrientation(edges)
    edges = detector.edgesNms(edges, orientation)
    generator = cv2.ximgproc.createEdgeBoxes()
    generator.setMaxBoxes(int(max_boxes))
    rects, scores = generator.getBoundingBoxes(edges, orientation)
    rects = np.asarray(rects).reshape(-1, 4)
    boxes = _xywh_rows(rects, np.asarray(scores).reshape(-1)[:len(rects)])
  boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
  boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
  return boxes.astype(np.float32)


# --------------------------------------------------------------------------------------- selecting
def select_windows(boxes: np.ndarray, image_hw: tuple[int, int], max_count: int = 50,
                   min_size: int = 112, context: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """The windows DeconvNet runs on: (windows (max_count, 4) int32, valid (max_count,) bool).

  Follows the loop of inference/generate_EDeconvNet_CRF_results.m:
    1. boxes sorted by score, descending (stable: ties keep the file order);
    2. each enlarged `context` times about its centre: the smallest pixel window holding
       [x0, x1 + 1) scaled about its centre (context 1.0 = the box itself, for the original's
       cache, which is already enlarged; 1.2 = the paper's extension of raw EdgeBoxes /
       selective-search boxes);
    3. clipped to the original's padded canvas: the image plus `width` rows above and below and
       `height` columns left and right (padarray(I, [img_width, img_height]));
    4. kept when at least `min_size` on both sides (the script skips min(w, h) < 112);
    5. the first `max_count` (config.max_proposal_num = 50), padded with zero windows whose
       `valid` is False.
  Windows are (y0, x0, y1, x1), end-exclusive, in image coordinates (negative or past the image
  where they reach into the padding).
  """
  height, width = (int(v) for v in image_hw)
  if height < 1 or width < 1:
    raise ValueError(f'image size {image_hw} must be positive')
  if max_count < 1 or min_size < 1 or context <= 0:
    raise ValueError(f'max_count {max_count} and min_size {min_size} must be >= 1 and context '
                     f'{context} > 0')
  boxes = _check_array(boxes, 'select_windows')
  order = np.argsort(-boxes[:, 4].astype(np.float64), kind='stable')
  b = boxes[order].astype(np.float64)
  cx, cy = (b[:, 0] + b[:, 2] + 1) / 2, (b[:, 1] + b[:, 3] + 1) / 2
  half_w, half_h = context * (b[:, 2] - b[:, 0] + 1) / 2, context * (b[:, 3] - b[:, 1] + 1) / 2
  # Rounded to 1e-6 first so that exact boxes (context 1.0) stay exact.
  y0 = np.floor(np.round(cy - half_h, 6)).astype(np.int64)
  x0 = np.floor(np.round(cx - half_w, 6)).astype(np.int64)
  y1 = np.ceil(np.round(cy + half_h, 6)).astype(np.int64)
  x1 = np.ceil(np.round(cx + half_w, 6)).astype(np.int64)
  y0, y1 = np.clip(y0, -width, height + width), np.clip(y1, -width, height + width)
  x0, x1 = np.clip(x0, -height, width + height), np.clip(x1, -height, width + height)
  keep = ((y1 - y0) >= min_size) & ((x1 - x0) >= min_size)
  chosen = np.stack([y0, x0, y1, x1], axis=1)[keep][:max_count]
  windows = np.zeros((max_count, 4), np.int32)
  windows[:len(chosen)] = chosen
  valid = np.zeros((max_count,), bool)
  valid[:len(chosen)] = True
  return windows, valid
