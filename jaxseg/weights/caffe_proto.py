"""Reading and writing Caffe `.caffemodel` files over protobuf's wire format (no Caffe needed).

A `.caffemodel` is a serialised `NetParameter` (BVLC/caffe src/caffe/proto/caffe.proto). Only the
fields that carry weights are decoded; every other field is skipped by its wire type:

  NetParameter      layer = 100 (LayerParameter), legacy layers = 2 (V1LayerParameter)
  LayerParameter    name = 1, type = 2 (string), blobs = 7
  V1LayerParameter  name = 4, type = 5 (LayerType enum; the strings of Caffe's
                    util/upgrade_proto.cpp UpgradeV1LayerType), blobs = 6
  BlobProto         shape = 7 (BlobShape: dim = 1, packed int64), data = 5 (packed float),
                    double_data = 8 (packed double), legacy num/channels/height/width = 1/2/3/4

A blob's shape is its BlobShape or, when any legacy field is set, (num, channels, height, width),
as Caffe's Blob::FromProto decides. Repeated floats are read with `np.frombuffer`, packed or not
(a run of unpacked values is decoded as one strided array), so a 500 MB VGG16 model is decoded in
about the time it takes to read it. V0 layers (Caffe's 2013 format, nested in V1 field 1) are not
read: the models jaxseg imports are V1 (VGG_ILSVRC_16_layers) or newer (FCN, PSPNet).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
from etils import epath

from jaxseg import storage

# Wire types (protobuf encoding); 3/4 (groups) do not occur in caffe.proto.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# V1LayerParameter.LayerType -> LayerParameter type string (upgrade_proto.cpp).
V1_LAYER_TYPES: dict[int, str] = {
    0: '', 35: 'AbsVal', 1: 'Accuracy', 30: 'ArgMax', 2: 'BNLL', 3: 'Concat',
    37: 'ContrastiveLoss', 4: 'Convolution', 39: 'Deconvolution', 5: 'Data', 6: 'Dropout',
    32: 'DummyData', 7: 'EuclideanLoss', 25: 'Eltwise', 38: 'Exp', 8: 'Flatten', 9: 'HDF5Data',
    10: 'HDF5Output', 28: 'HingeLoss', 11: 'Im2col', 12: 'ImageData', 13: 'InfogainLoss',
    14: 'InnerProduct', 15: 'LRN', 29: 'MemoryData', 16: 'MultinomialLogisticLoss', 34: 'MVN',
    17: 'Pooling', 26: 'Power', 18: 'ReLU', 19: 'Sigmoid', 27: 'SigmoidCrossEntropyLoss',
    36: 'Silence', 20: 'Softmax', 21: 'SoftmaxWithLoss', 22: 'Split', 33: 'Slice', 23: 'TanH',
    24: 'WindowData', 31: 'Threshold',
}
_V1_TYPE_NUMBERS = {name: number for number, name in V1_LAYER_TYPES.items()}


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
  """One layer of a Caffe net: its name, type string and parameter blobs (float32, Caffe shape)."""
  name: str
  type: str
  blobs: tuple[np.ndarray, ...] = ()


class _Corrupt(Exception):
  """A decoding failure at a byte offset; read_caffemodel turns it into a ValueError."""

  def __init__(self, offset: int, what: str):
    super().__init__(what)
    self.offset, self.what = offset, what


# ---------------------------------------------------------------------------------------------
# Decoding.

def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
  """(value, next position) of the varint at `pos`."""
  start, value, shift = pos, 0, 0
  while True:
    if pos >= end:
      raise _Corrupt(start, 'varint runs past the end of its message (truncated?)')
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7
    if shift >= 70:
      raise _Corrupt(start, 'varint longer than 10 bytes')


def _field(buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int, int]:
  """(number, wire type, start, value, next position) of the field at `pos`.

  value: the integer of a varint; otherwise the payload's end (the payload is buf[start:value]).
  """
  tag, start = _varint(buf, pos, end)
  number, wire = tag >> 3, tag & 7
  if number == 0:
    raise _Corrupt(pos, 'field number 0')
  if wire == _VARINT:
    value, after = _varint(buf, start, end)
  elif wire == _LEN:
    length, start = _varint(buf, start, end)
    value = after = start + length
  elif wire in (_I64, _I32):
    value = after = start + (8 if wire == _I64 else 4)
  else:
    raise _Corrupt(pos, f'unsupported wire type {wire} (field {number})')
  if after > end:
    raise _Corrupt(pos, f'field {number} runs past the end of its message (truncated?)')
  return number, wire, start, value, after


def _unpacked(buf: memoryview, start: int, end: int, tag: int, dtype: str
              ) -> tuple[np.ndarray, int]:
  """A run of unpacked fixed-size values (one-byte tag + value) whose first payload is at `start`.

  Returns (values, position after the run), read as one strided array.
  """
  step = np.dtype(dtype).itemsize + 1
  first = start - 1  # The run's first tag byte.
  rows = np.frombuffer(buf, np.uint8, count=(end - first) // step * step, offset=first)
  tags = rows.reshape(-1, step)[:, 0] == tag
  count = len(tags) if tags.all() else int(np.argmin(tags))
  values = rows[:count * step].reshape(count, step)[:, 1:].copy().view(dtype).ravel()
  return values, first + count * step


def _dims(buf: memoryview, pos: int, end: int) -> list[int]:
  """BlobShape.dim (field 1, packed or not)."""
  dims = []
  while pos < end:
    number, wire, start, value, pos = _field(buf, pos, end)
    if number == 1 and wire == _LEN:
      while start < value:
        dim, start = _varint(buf, start, value)
        dims.append(dim)
    elif number == 1 and wire == _VARINT:
      dims.append(value)
  return dims


def _blob(buf: memoryview, pos: int, end: int, layer: str) -> np.ndarray:
  """A BlobProto -> float32 array in its Caffe shape."""
  blob_at, dims, legacy, data, double = pos, None, {}, [], []
  while pos < end:
    number, wire, start, value, pos = _field(buf, pos, end)
    if number in (5, 8) and wire == _LEN:
      data_type = '<f4' if number == 5 else '<f8'
      size = np.dtype(data_type).itemsize
      if (value - start) % size:
        raise _Corrupt(start, f'layer {layer!r}: packed blob data of {value - start} bytes is '
                       f'not a whole number of {size}-byte values')
      (data if number == 5 else double).append(
          np.frombuffer(buf, data_type, count=(value - start) // size, offset=start))
    elif (number, wire) in ((5, _I32), (8, _I64)):
      values, pos = _unpacked(buf, start, end, (number << 3) | wire,
                              '<f4' if number == 5 else '<f8')
      (data if number == 5 else double).append(values)
    elif number == 7 and wire == _LEN:
      dims = _dims(buf, start, value)
    elif number in (1, 2, 3, 4) and wire == _VARINT:
      legacy[number] = value
  # Blob::FromProto: any legacy dimension set -> 4-D (num, channels, height, width), default 0.
  shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims or ())
  values = np.concatenate(data) if data else (np.concatenate(double) if double else
                                              np.zeros(0, np.float32))
  if values.size != math.prod(shape):
    raise _Corrupt(blob_at, f'layer {layer!r}: blob of shape {shape} holds {values.size} values')
  return values.astype(np.float32).reshape(shape)


def _layer(buf: memoryview, pos: int, end: int, legacy: bool) -> CaffeLayer:
  """A LayerParameter (or, legacy, a V1LayerParameter)."""
  name_field, type_field, blobs_field = (4, 5, 6) if legacy else (1, 2, 7)
  layer_at, name, kind, blob_spans = pos, '', '', []
  while pos < end:
    number, wire, start, value, pos = _field(buf, pos, end)
    if number == name_field and wire == _LEN:
      name = bytes(buf[start:value]).decode('utf-8', errors='replace')
    elif number == type_field and legacy and wire == _VARINT:
      if value not in V1_LAYER_TYPES:
        raise _Corrupt(layer_at, f'V1 layer type {value} is not a Caffe LayerType')
      kind = V1_LAYER_TYPES[value]
    elif number == type_field and not legacy and wire == _LEN:
      kind = bytes(buf[start:value]).decode('utf-8', errors='replace')
    elif number == blobs_field and wire == _LEN:
      blob_spans.append((start, value))
  blobs = tuple(_blob(buf, start, stop, name) for start, stop in blob_spans)
  return CaffeLayer(name, kind, blobs)


def parse_net(data: bytes, source: str = 'caffemodel') -> list[CaffeLayer]:
  """The layers of a serialised NetParameter (new `layer` ones, then legacy V1 `layers`)."""
  buf = memoryview(data)
  new, old, pos = [], [], 0
  try:
    while pos < len(buf):
      number, wire, start, value, pos = _field(buf, pos, len(buf))
      if number in (100, 2) and wire == _LEN:
        (new if number == 100 else old).append(_layer(buf, start, value, legacy=number == 2))
  except _Corrupt as e:
    raise ValueError(f'{source}: corrupt or truncated Caffe model at byte {e.offset} of '
                     f'{len(buf)}: {e.what}') from None
  layers = new + old
  if not any(layer.blobs for layer in layers):
    found = f'{len(layers)} layers, none with weights' if layers else 'no layers'
    raise ValueError(f'{source} is not a trained Caffe model: expected a NetParameter whose '
                     f'layers (field 100, or legacy field 2) hold weight blobs, found {found}')
  return layers


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
  """The layers of a `.caffemodel` (local or gs://); raises ValueError naming the file."""
  path = storage.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f'Caffe model {path} does not exist')
  return parse_net(path.read_bytes(), str(path))


# ---------------------------------------------------------------------------------------------
# Encoding (fixtures in the original layout; the inverse of read_caffemodel).

def _encode_varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
  return _encode_varint((number << 3) | _LEN) + _encode_varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
  return _encode_varint((number << 3) | _VARINT) + _encode_varint(value)


def _encode_blob(blob: np.ndarray, legacy: bool, layer: str) -> bytes:
  blob = np.asarray(blob, np.float32)
  parts = []
  if legacy:  # num, channels, height, width: shapes under 4-D padded at the front with 1s.
    if blob.ndim > 4:
      raise ValueError(f'layer {layer!r}: a legacy (V1) blob has at most 4 dimensions, got '
                       f'shape {blob.shape}; write with legacy=False')
    for number, dim in enumerate((1,) * (4 - blob.ndim) + blob.shape, 1):
      parts.append(_varint_field(number, dim))
  parts.append(_len_field(5, blob.astype('<f4').tobytes()))
  if not legacy:
    dims = b''.join(_encode_varint(d) for d in blob.shape)
    parts.append(_len_field(7, _len_field(1, dims) if blob.shape else b''))
  return b''.join(parts)


def _encode_layer(layer: CaffeLayer, legacy: bool) -> bytes:
  if legacy:
    if layer.type not in _V1_TYPE_NUMBERS:
      raise ValueError(f'layer {layer.name!r}: type {layer.type!r} has no V1 LayerType; write '
                       'with legacy=False')
    head = _len_field(4, layer.name.encode()) + _varint_field(5, _V1_TYPE_NUMBERS[layer.type])
  else:
    head = _len_field(1, layer.name.encode()) + _len_field(2, layer.type.encode())
  blobs_field = 6 if legacy else 7
  return head + b''.join(_len_field(blobs_field, _encode_blob(b, legacy, layer.name))
                         for b in layer.blobs)


def serialize_net(layers: Sequence[CaffeLayer], legacy: bool = False) -> bytes:
  """A NetParameter of `layers`: `layer` (field 100) or, legacy, V1 `layers` (field 2)."""
  field = 2 if legacy else 100
  return b''.join(_len_field(field, _encode_layer(layer, legacy)) for layer in layers)


def write_caffemodel(path: str | os.PathLike, layers: Sequence[CaffeLayer],
                     legacy: bool = False) -> epath.Path:
  """Writes `layers` as a `.caffemodel` (tmp file, then rename); returns the path."""
  path = storage.resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_bytes(serialize_net(layers, legacy))
  tmp.replace(path)
  return path


def layers_with_weights(layers: list[CaffeLayer], source: str) -> dict[str, CaffeLayer]:
  """name -> layer for the layers that hold blobs; ValueError naming `source` on a repeated name.

  Data, ReLU, pooling, crop and loss layers (no blobs) are left out.
  """
  by_name: dict[str, CaffeLayer] = {}
  for layer in layers:
    if not layer.blobs:
      continue
    if layer.name in by_name:
      raise ValueError(f'{source}: two layers with weights are named {layer.name!r}')
    by_name[layer.name] = layer
  return by_name
