// Science-T2I for ComfyUI: each pack node shows its summary after it runs (a read-only text
// box under the node), keeps the per-image scores it sent, and draws a score badge on the
// images the graph previews: on Save Scored Images, and on core preview/save nodes fed by a
// pack node that scored their images. Without this file (API workflows, comfy-cli) nothing
// changes: the nodes' outputs are the same.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";
import {
  PREVIEW_WIDGET, SUMMARY_WIDGET, afterDraw, badgeLabels, badgesForBoxes, imageBoxes,
  isPackNode, scoresOf, summaryText, upstreamScores,
} from "./summary.js";

const PREVIEW_NODES = new Set(["PreviewImage", "SaveImage"]);

function showSummary(node, text) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, SUMMARY_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;                   // not saved in the workflow, not sent to /prompt
    widget.options = { ...(widget.options ?? {}), serialize: false };
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.75;
    }
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

function sizeCaptionHeight() {
  // the preview writes "W × H" under a single image unless the user switched it off
  const shown = app.extensionManager?.setting?.get?.("Comfy.Node.AllowImageSizeDraw");
  return shown === false ? 0 : 15;
}

function drawBadges(node, ctx, scores) {
  if (!scores || !node.imgs?.length) return;
  const preview = node.widgets?.find((w) => w.name === PREVIEW_WIDGET);
  const boxes = imageBoxes({
    nodeWidth: node.size[0], nodeHeight: node.size[1], shiftY: preview?.y ?? 0,
    textHeight: sizeCaptionHeight(), imageRects: node.imageRects, imageIndex: node.imageIndex,
    sizes: node.imgs.map((img) => ({ w: img.naturalWidth, h: img.naturalHeight })),
  });
  const label = node.scienceScoreLabel ?? "SciScore";
  const badges = badgesForBoxes(badgeLabels(scores, label), boxes, node.imageIndex);
  ctx.save();
  ctx.font = "bold 13px sans-serif";
  ctx.textAlign = "left";
  for (const { box, text } of badges) {
    const w = ctx.measureText(text).width + 10;
    ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
    ctx.fillRect(box.x + 4, box.y + 4, w, 20);
    ctx.fillStyle = "#ffd75e";
    ctx.fillText(text, box.x + 9, box.y + 19);
  }
  ctx.restore();
}

app.registerExtension({
  name: "ScienceT2I.results",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const pack = isPackNode(nodeData);
    if (!pack && !PREVIEW_NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (!pack) return;
      this.scienceScores = scoresOf(message);
      const text = summaryText(message);
      if (text) showSummary(this, text);
    };
    // the foreground is drawn before the widgets: hook the image preview widget (made when
    // images arrive) so the badges go on top of its images
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      onDrawForeground?.apply(this, arguments);
      const preview = this.widgets?.find((w) => w.name === PREVIEW_WIDGET);
      afterDraw(preview, (ctx) => {
        drawBadges(this, ctx, pack ? this.scienceScores : upstreamScores(this, app.graph));
      });
    };
  },
});
