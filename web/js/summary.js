// What the Science-T2I nodes show after they run, worked out from the message ComfyUI
// sends ("executed": the node's "ui" dict). Pure functions, no ComfyUI imports, so that
// node's own test runner checks them (tests/web/) and the extension stays a thin adapter.

export const PACK_PREFIX = "ScienceT2I_";
export const SUMMARY_WIDGET = "science_summary";
export const PREVIEW_WIDGET = "$$canvas-image-preview";

export function isPackNode(nodeData) {
  return typeof nodeData?.name === "string" && nodeData.name.startsWith(PACK_PREFIX);
}

// The "text" entries, joined (list-mapped runs send one entry per run).
export function summaryText(message) {
  const text = message?.text;
  if (!Array.isArray(text)) return null;
  const parts = text.filter((t) => typeof t === "string" && t.trim() !== "");
  return parts.length ? parts.join("\n") : null;
}

// The per-image scores a node sent in its "scores" entry, as finite numbers; null when
// there are none or one is not a number (a badge is never drawn from a guess).
export function scoresOf(message) {
  const scores = message?.scores;
  if (!Array.isArray(scores) || scores.length === 0) return null;
  const out = scores.map((s) => (typeof s === "number" ? s : Number.parseFloat(s)));
  return out.every(Number.isFinite) ? out : null;
}

// Badge text per image: the score and its rank among the images (1 = best).
export function badgeLabels(scores, label = "SciScore", digits = 2) {
  if (!scores) return [];
  const order = scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const rank = new Array(scores.length);
  order.forEach(([, i], r) => { rank[i] = r + 1; });
  const prefix = label ? `${label} ` : "";
  return scores.map((s, i) => `${prefix}${s.toFixed(digits)}  #${rank[i]}`);
}

// Where each previewed image lies on the node, in node coordinates, as the frontend's
// image-preview widget draws it: several images at once fill grid cells (imageRects), each
// image fitted and centred in its cell; one image is scaled to fit between the widget's top
// (shiftY) and the size caption (textHeight), never enlarged, and centred.
export function imageBoxes({ nodeWidth, nodeHeight, shiftY = 0, textHeight = 0,
                             imageRects = null, imageIndex = null, sizes = [] }) {
  const fit = (x, y, w, h, size) => {
    if (!size || !(size.w > 0 && size.h > 0)) return { x, y, w, h };
    const r = Math.min(w / size.w, h / size.h);
    return { x: x + (w - size.w * r) / 2, y: y + (h - size.h * r) / 2, w: size.w * r, h: size.h * r };
  };
  if (Array.isArray(imageRects) && imageRects.length && imageIndex == null) {
    return imageRects.map(([x, y, w, h], i) => fit(x, y, w, h, sizes[i]));
  }
  const size = sizes[imageIndex ?? 0];
  if (!size || !(size.w > 0 && size.h > 0)) return [];
  const dw = nodeWidth;
  const dh = nodeHeight - shiftY - textHeight;
  const scale = Math.min(dw / size.w, dh / size.h, 1);
  const w = size.w * scale;
  const h = size.h * scale;
  return [{ x: (dw - w) / 2, y: (dh - h) / 2 + shiftY, w, h }];
}

// Run ``after(ctx)`` each time ``widget`` has drawn itself (once wrapped, never twice). The
// frontend draws a node's foreground before its widgets, so a badge drawn there would be
// painted over by the preview widget's images; its draw method is "drawWidget" in frontends
// built on BaseWidget and "draw" in older ones.
export function afterDraw(widget, after) {
  if (!widget || widget.scienceAfterDraw) return false;
  const name = ["drawWidget", "draw"].find((n) => typeof widget[n] === "function");
  if (!name) return false;
  const original = widget[name];
  widget[name] = function (ctx, ...rest) {
    const result = original.call(this, ctx, ...rest);
    after(ctx);
    return result;
  };
  widget.scienceAfterDraw = true;
  return true;
}

// Which badge goes in which box: every image's badge in a grid, the shown image's alone.
export function badgesForBoxes(labels, boxes, imageIndex = null) {
  if (!labels.length || !boxes.length) return [];
  if (boxes.length === 1 && labels.length > 1) {
    const i = imageIndex ?? 0;
    return i < labels.length ? [{ box: boxes[0], text: labels[i] }] : [];
  }
  if (boxes.length !== labels.length) return [];   // not the images these scores are for
  return boxes.map((box, i) => ({ box, text: labels[i] }));
}

// The scores of the node that feeds this one's first image input (a core PreviewImage or
// SaveImage fed by SciScore Rank shows the ranked images), if it has any.
export function upstreamScores(node, graph) {
  const input = node?.inputs?.find((i) => i?.type === "IMAGE" && i.link != null);
  if (!input || !graph) return null;
  const link = graph.links?.[input.link] ?? graph.links?.get?.(input.link);
  const origin = link ? graph.getNodeById?.(link.origin_id) : null;
  return origin?.scienceScores ?? null;
}
