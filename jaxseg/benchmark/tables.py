"""The benchmark's report: a header line (devices, host, peak, load) and a Markdown table."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _gib(n: int | None) -> str:
  return f'{n / 2**30:.2f}' if n else '-'


def _mfu(x: float | None) -> str:
  """MFU as a percentage; 'n/a' where the peak (or the FLOP count) is unknown."""
  if x is None:
    return 'n/a'
  return f'{100 * x:.1f}%' if x < 0.1 else f'{100 * x:.0f}%'


def _rate(flops_per_s: float) -> str:
  if flops_per_s >= 1e12:
    return f'{flops_per_s / 1e12:.1f} TFLOP/s'
  return f'{flops_per_s / 1e9:.0f} GFLOP/s'


def config_name(r: dict[str, Any]) -> str:
  name = f"{r['model'] or r['op']} b{r['batch']} {r['size'][0]}x{r['size'][1]} {r['dtype']}"
  if r.get('width', 1.0) != 1.0:
    name += f" w{r['width']:g}"
  if r.get('conv_impl', 'auto') != 'auto':
    name += f" conv={r['conv_impl']}"
  return name


def format_table(records: Sequence[dict[str, Any]]) -> str:
  """Markdown table: per config, jaxseg and torch step time, img/s, MFU, memory, and ratio."""
  head = ('| config | mode | jaxseg ms/step | img/s | compile s | GFLOP/step | GFLOP/s | MFU '
          '| mem GiB | torch ms/step | img/s | MFU | mem GiB | jaxseg/torch speed |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in records:
    name = config_name(r)
    if 'error' in r:
      lines.append(f"| {name} | {r['mode']} | error: {r['error'][:120]} |")
      continue
    j, t = r['jax'], r.get('torch')
    mem = lambda m: _gib(m['device_peak_bytes'] or m['peak_rss'])
    row = [name, r['mode'], f"{1e3 * j['step_s']:.1f}", f"{j['images_per_s']:.2f}",
           f"{j['compile_s']:.1f}", f"{r['flops'] / 1e9:.1f}",
           f"{(j['flops_per_s'] or 0) / 1e9:.0f}", _mfu(j['mfu']), mem(j)]
    if t:
      row += [f"{1e3 * t['step_s']:.1f}", f"{t['images_per_s']:.2f}", _mfu(t['mfu']), mem(t),
              f"{r['speedup_vs_torch']:.2f}x"]
    else:
      row += ['-'] * 5
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def format_header(host: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
  """One line: where each framework ran (as the workers reported it), the host, peak and load."""
  measured = [r for r in records if 'device' in r]
  if measured:
    d = measured[0]['device']
    text = (f"jaxseg on {d['platform']} ({d['device_kind']}, 1 of {d['device_count']} "
            f"devices used), jax {d['jax']}")
    torch_devices = sorted({r['torch']['device'] for r in measured if r.get('torch')})
    if torch_devices:
      text += f"; torch on {', '.join(torch_devices)}"
  else:
    text = 'no configuration ran'
  text += f"; host CPU {host['cpu']}, {host['cores']} cores"
  peaks = [r['peak_flops_per_s'] for r in measured if r.get('peak_flops_per_s')]
  if peaks:
    span = _rate(min(peaks)) if min(peaks) == max(peaks) else (
        f'{_rate(min(peaks))} - {_rate(max(peaks))}')
    text += f"; peak {span} ({measured[0].get('peak_source', '')})"
  elif measured:
    text += f"; MFU n/a ({measured[0].get('peak_source', 'no peak')})"
  loads = [v for r in records for v in (r.get('load_before', [None])[:1]
                                         + r.get('load_after', [None])[:1]) if v is not None]
  if loads:
    text += f'; 1-min load average {min(loads):.1f}-{max(loads):.1f} during the run'
  return text
