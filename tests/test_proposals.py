"""Object proposals: files, conversions, OpenCV proposals and window selection
(jaxseg/inference/proposals.py). Conversions are checked against hand-computed values and
against the crops of the original's padded image (generate_EDeconvNet_CRF_results.m)."""
import json

import numpy as np
import PIL.Image
import pytest
import scipy.io

from jaxseg.inference import proposals as prop

# Rows (x0, y0, x1, y1, score), 0-based, x1/y1 inclusive.
BOXES = np.asarray([[5, 7, 30, 20, 0.9], [0, 0, 59, 39, 0.5], [12.5, 3, 40, 33, 0.7]], np.float32)
HW = (40, 60)  # (height, width) of the image the boxes belong to.


def write_all(tmp_path):
  folder = tmp_path / 'folder'
  folder.mkdir()
  lines = ['# x0 y0 x1 y1 score', ''] + [' '.join(f'{v:g}' for v in row) for row in BOXES]
  (folder / 'a.txt').write_text('\n'.join(lines) + '\n')
  np.save(folder / 'b.npy', BOXES)
  np.savez(tmp_path / 'all.npz', a=BOXES, b=BOXES[:2])
  (tmp_path / 'all.json').write_text(json.dumps({'a': BOXES.tolist(), 'b': BOXES[:2].tolist()}))
  return folder


def test_txt_npy_npz_json_round_trip(tmp_path):
  folder = write_all(tmp_path)
  p = prop.read_proposals(folder)
  np.testing.assert_allclose(p.boxes('a', HW), BOXES)
  np.testing.assert_allclose(p('b', HW), BOXES)
  for name in ('all.npz', 'all.json'):
    q = prop.read_proposals(tmp_path / name)
    np.testing.assert_allclose(q.boxes('a', HW), BOXES, rtol=1e-6)
    np.testing.assert_allclose(q.boxes('b', HW), BOXES[:2], rtol=1e-6)
    assert q.boxes('a', HW).dtype == np.float32
  # Four columns: the file order is the score order.
  (folder / 'c.txt').write_text('1 2 3 4\n5,6,7,8\n')
  np.testing.assert_array_equal(p.boxes('c', HW), [[1, 2, 3, 4, 2], [5, 6, 7, 8, 1]])
  (folder / 'empty.txt').write_text('')
  assert p.boxes('empty', HW).shape == (0, 5)


def test_mat_boxes_padded_of_the_original_cache(tmp_path):
  height, width = HW
  # By hand: padarray(I, [width, height]) puts image pixel (row r, col c) (0-based) at padded
  # 1-based (r + width + 1, c + height + 1); box (x0 5, y0 7, x1 30, y1 20) -> [46 68 71 81].
  # The second box is the whole padded image (rows 1..160, columns 1..140).
  padded = np.asarray([[46, 68, 71, 81], [1, 1, 140, 160], [41, 61, 100, 100]], np.float64)
  scipy.io.savemat(tmp_path / 'x.mat', {'boxes_padded': padded})
  boxes = prop.read_proposals(tmp_path).boxes('x', HW)
  np.testing.assert_array_equal(boxes, [[5, 7, 30, 20, 3], [-40, -60, 99, 99, 2],
                                        [0, 0, 59, 39, 1]])
  # The original's crop of its padded image is the crop of these image coordinates.
  image = np.random.default_rng(0).integers(1, 256, HW + (3,), np.uint8)
  padded_image = np.pad(image, ((width, width), (height, height), (0, 0)))
  assert padded_image.shape[:2] == (height + 2 * width, width + 2 * height)
  for (x1, y1, x2, y2), (x0, y0, x1i, y1i, _) in zip(padded.astype(int), boxes.astype(int)):
    crop = padded_image[y1 - 1:y2, x1 - 1:x2]
    ys, xs = np.arange(y0, y1i + 1), np.arange(x0, x1i + 1)
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    expect = np.zeros(crop.shape, np.uint8)
    expect[inside] = image[np.clip(ys, 0, height - 1)][:, np.clip(xs, 0, width - 1)][inside]
    np.testing.assert_array_equal(crop, expect)
  # Selected with context 1: the windows are the cache's boxes, in file order.
  windows, valid = prop.select_windows(boxes, HW, max_count=4, min_size=14)
  np.testing.assert_array_equal(windows[:3], [[7, 5, 21, 31], [-60, -40, 100, 100], [0, 0, 40, 60]])
  np.testing.assert_array_equal(valid, [True, True, True, False])
  windows, valid = prop.select_windows(boxes, HW, max_count=4, min_size=15)  # 14 rows: skipped.
  np.testing.assert_array_equal(windows[:2], [[-60, -40, 100, 100], [0, 0, 40, 60]])
  np.testing.assert_array_equal(valid, [True, True, False, False])


def test_mat_edgeboxes_bbs(tmp_path):
  # edgeBoxes.m: [x y w h score], 1-based (x, y) -> x0 = x - 1, x1 = x0 + w - 1.
  bbs = np.asarray([[6, 8, 26, 14, 0.25], [1, 1, 60, 40, 0.75]], np.float32)
  scipy.io.savemat(tmp_path / 'e.mat', {'bbs': bbs})
  np.testing.assert_allclose(prop.read_proposals(tmp_path).boxes('e', HW),
                             [[5, 7, 30, 20, 0.25], [0, 0, 59, 39, 0.75]])


def test_errors_name_the_file_and_line(tmp_path):
  folder = write_all(tmp_path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    prop.read_proposals(tmp_path / 'nowhere')
  p = prop.read_proposals(folder)
  with pytest.raises(FileNotFoundError, match=r"'zz'.*folder/zz\.txt, \.npy or \.mat"):
    p.boxes('zz', HW)
  (folder / 'bad.txt').write_text('1 2 3 4 0.5\n1 2 three 4 0.5\n')
  with pytest.raises(ValueError, match=r'bad\.txt:2: expected numbers'):
    p.boxes('bad', HW)
  (folder / 'short.txt').write_text('1 2 3 4 0.5\n\n1 2 3\n')
  with pytest.raises(ValueError, match=r'short\.txt:3: expected 5'):
    p.boxes('short', HW)
  (folder / 'mixed.txt').write_text('1 2 3 4 0.5\n1 2 3 4\n')
  with pytest.raises(ValueError, match=r'mixed\.txt: lines mix 4 and 5'):
    p.boxes('mixed', HW)
  np.save(folder / 'shape.npy', np.zeros((3, 7)))
  with pytest.raises(ValueError, match=r'shape\.npy: boxes must be an \(N, 5\)'):
    p.boxes('shape', HW)
  scipy.io.savemat(folder / 'other.mat', {'boxes': np.zeros((2, 4))})
  with pytest.raises(ValueError, match=r"other\.mat: no variable boxes_padded .* \['boxes'\]"):
    p.boxes('other', HW)
  np.save(folder / 'a.npy', BOXES)
  with pytest.raises(ValueError, match="'a' has several proposal files"):
    p.boxes('a', HW)
  with pytest.raises(ValueError, match=r"all\.json holds no proposals for image id 'q'"):
    prop.read_proposals(tmp_path / 'all.json').boxes('q', HW)
  (tmp_path / 'list.json').write_text('[1, 2]')
  with pytest.raises(ValueError, match='expected an object'):
    prop.read_proposals(tmp_path / 'list.json')
  (tmp_path / 'p.csv').write_text('')
  with pytest.raises(ValueError, match=r'must be a folder, a \.npz or a \.json'):
    prop.read_proposals(tmp_path / 'p.csv')


def test_select_windows_context_size_order_count():
  boxes = np.asarray([
      [10, 20, 109, 69, 0.5],     # 100 x 50
      [0, 0, 199, 199, 0.9],      # 200 x 200
      [5, 5, 115, 116, 0.5],      # 111 wide: skipped at context 1, kept at 1.2; ties keep order
      [-500, -500, 900, 900, 0.1],  # Far past the padded canvas: clipped to it.
  ], np.float32)
  hw = (150, 120)
  windows, valid = prop.select_windows(boxes, hw, max_count=5, min_size=112)
  # Score order: box 1 (0.9), boxes 0 and 2 (0.5, file order), box 3. Box 0 (50 rows) and box
  # 2 (111 columns) are too small; box 3 is clipped to rows [-120, 270), columns [-150, 270).
  np.testing.assert_array_equal(windows[:2], [[0, 0, 200, 200], [-120, -150, 270, 270]])
  np.testing.assert_array_equal(valid, [True, True, False, False, False])
  assert np.all(windows[2:] == 0) and windows.dtype == np.int32 and windows.shape == (5, 4)
  # Context 1.2 by hand: box 0 centre (60, 45), 120 x 60 -> x [0, 120), y [15, 75); box 2
  # centre (60.5, 61), 133.2 x 134.4 -> x [floor(-6.1), ceil(127.1)), y [floor(-6.2), ceil(128.2)).
  windows, valid = prop.select_windows(boxes, hw, max_count=5, min_size=50, context=1.2)
  np.testing.assert_array_equal(windows[:4], [[-20, -20, 220, 220], [15, 0, 75, 120],
                                              [-7, -7, 129, 128], [-120, -150, 270, 270]])
  assert valid.tolist() == [True, True, True, True, False]
  # Count: the first max_count in score order.
  many = np.asarray([[0, 0, 119 + i, 119, 100 - i] for i in range(60)], np.float32)
  windows, valid = prop.select_windows(many, hw, max_count=50)
  assert valid.all() and windows[-1, 3] == 119 + 49 + 1
  with pytest.raises(ValueError, match='context'):
    prop.select_windows(boxes, hw, context=0)


def box_iou(a, b):
  """IoU of inclusive boxes (x0, y0, x1, y1)."""
  iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
  ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
  inter = iw * ih
  area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
  return inter / (area(a) + area(b) - inter)


def check_inside(boxes, hw, max_boxes):
  assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
  assert 0 < len(boxes) <= max_boxes
  assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= hw[1] - 1)
  assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= hw[0] - 1)
  assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
  assert np.all(np.diff(boxes[:, 4]) < 0)  # Rank order, best first.


def test_selective_search_on_a_synthetic_image():
  rng = np.random.default_rng(0)
  image = (rng.normal(128, 6, (96, 128, 3))).clip(0, 255).astype(np.uint8)
  image[20:60, 30:90] = (200, 30, 30)  # Rows 20..59, columns 30..89.
  boxes = prop.compute_proposals(image, max_boxes=300)
  check_inside(boxes, image.shape[:2], 300)
  assert max(box_iou(b, (30, 20, 89, 59)) for b in boxes) > 0.9


def test_selective_search_on_camvid(shared_data):
  files = sorted((shared_data / 'camvid' / 'val').glob('*.png'))
  if not files:
    pytest.skip('no CamVid val images')
  image = np.asarray(PIL.Image.open(files[0]).convert('RGB'))
  boxes = prop.compute_proposals(image, max_boxes=2000)
  check_inside(boxes, image.shape[:2], 2000)
  windows, valid = prop.select_windows(boxes, image.shape[:2], context=1.2)
  assert valid.any()
  assert np.all((windows[valid, 2] - windows[valid, 0] >= 112)
                & (windows[valid, 3] - windows[valid, 1] >= 112))


def test_compute_proposals_errors(tmp_path):
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match='model_path'):
    prop.compute_proposals(image, 'edgeboxes')
  with pytest.raises(FileNotFoundError, match='model.yml.gz does not exist'):
    prop.compute_proposals(image, 'edgeboxes', model_path=tmp_path / 'model.yml.gz')
  with pytest.raises(ValueError, match='uint8 RGB'):
    prop.compute_proposals(image.astype(np.float32))
  with pytest.raises(ValueError, match='unknown proposal method'):
    prop.compute_proposals(image, 'mcg')
