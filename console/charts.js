// Small SVG charts, drawn here (no chart library to fetch): lines over a
// shared time axis, each series a color, with its latest value in the
// legend.

const NS = 'http://www.w3.org/2000/svg';

function el(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// series: [{name, cls, values: [number|null]}]; every series as long as
// the axis. Returns a <figure> with the chart and its legend.
export function lineChart(title, series, { width = 250, height = 84, unit = '' } = {}) {
  const fig = document.createElement('figure');
  fig.className = 'chart';
  const cap = document.createElement('figcaption');
  cap.textContent = title;
  fig.append(cap);
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': title });
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter((v) => v != null)));
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const x = (i) => (i / (n - 1)) * (width - 2) + 1;
  const y = (v) => height - 14 - (v / max) * (height - 20);
  svg.append(el('line', { x1: 0, x2: width, y1: height - 14, y2: height - 14, class: 'axis' }));
  const top = el('text', { x: 2, y: 9, class: 'tick' });
  top.textContent = `${max}${unit}`;
  svg.append(top);
  const start = el('text', { x: 2, y: height - 2, class: 'tick' });
  start.textContent = '-60 min';
  const end = el('text', { x: width - 2, y: height - 2, class: 'tick end' });
  end.textContent = 'now';
  svg.append(start, end);
  for (const s of series) {
    let d = '';
    s.values.forEach((v, i) => {
      if (v == null) return;
      d += `${d && s.values[i - 1] != null ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    });
    if (d) svg.append(el('path', { d, class: `series ${s.cls}` }));
  }
  fig.append(svg);
  const legend = document.createElement('div');
  legend.className = 'legend';
  for (const s of series) {
    const last = [...s.values].reverse().find((v) => v != null);
    const item = document.createElement('span');
    item.className = `key ${s.cls}`;
    item.textContent = `${s.name} ${last ?? '–'}${last != null ? unit : ''}`;
    legend.append(item);
  }
  fig.append(legend);
  return fig;
}
