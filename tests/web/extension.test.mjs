// The extension itself (web/js/science_t2i.js) against stand-ins of the two frontend modules
// it imports, laid out as ComfyUI serves them: /scripts/*.js, and the pack's web folder at
// /extensions/<pack>/ (so web/js/ files reach the scripts three folders up).
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "web", "js");

async function loadExtension() {
  const root = mkdtempSync(join(tmpdir(), "st2i-web-"));
  writeFileSync(join(root, "package.json"), '{"type": "module"}');
  mkdirSync(join(root, "scripts"));
  writeFileSync(join(root, "scripts", "app.js"),
    "export const app = { extensions: [], graph: null, registerExtension(e) { this.extensions.push(e); } };");
  writeFileSync(join(root, "scripts", "widgets.js"), `export const ComfyWidgets = {
    STRING(node, name, spec) {
      const widget = { name, value: "", options: {}, inputEl: { readOnly: false, style: {} } };
      (node.widgets ??= []).push(widget);
      return { widget };
    } };`);
  cpSync(web, join(root, "extensions", "science-t2i", "js"), { recursive: true });
  const entry = join(root, "extensions", "science-t2i", "js", "science_t2i.js");
  await import(pathToFileURL(entry).href);
  const { app } = await import(pathToFileURL(join(root, "scripts", "app.js")).href);
  return app;
}

function fakeCtx() {
  const texts = [];
  return { texts, save() {}, restore() {}, fillRect() {}, measureText: (t) => ({ width: t.length * 7 }),
           fillText(t, x, y) { texts.push({ t, x, y }); } };
}

test("a pack node shows its summary read-only, unsaved, and badges its images", async () => {
  const app = await loadExtension();
  assert.equal(app.extensions.length, 1);
  const ext = app.extensions[0];
  class Node {}
  await ext.beforeRegisterNodeDef(Node, { name: "ScienceT2I_SaveScoredImages" }, app);
  const node = Object.assign(new Node(), { size: [400, 500], setDirtyCanvas() {} });
  node.onExecuted({ text: ["a.png: 2.000\nb.png: 3.000"], scores: [2, 3], images: [{}, {}] });
  const widget = node.widgets.find((w) => w.name === "science_summary");
  assert.equal(widget.value, "a.png: 2.000\nb.png: 3.000");
  assert.equal(widget.inputEl.readOnly, true);
  assert.equal(widget.serialize, false);
  assert.equal(widget.options.serialize, false);
  node.onExecuted({ text: ["again"], scores: [1] });      // a re-run updates the same box
  assert.equal(node.widgets.length, 1);
  assert.equal(node.widgets[0].value, "again");

  node.onExecuted({ text: ["x"], scores: [2, 3] });
  node.imgs = [{ naturalWidth: 100, naturalHeight: 100 }, { naturalWidth: 100, naturalHeight: 100 }];
  node.imageRects = [[0, 50, 200, 200], [200, 50, 200, 200]];
  node.imageIndex = null;
  const drawn = [];
  node.widgets.push({ name: "$$canvas-image-preview", y: 50,
                      drawWidget(ctx) { drawn.push("images"); ctx.texts.push({ t: "images" }); } });
  const ctx = fakeCtx();
  node.onDrawForeground(ctx);          // the frontend: foreground first ...
  assert.deepEqual(ctx.texts, []);
  node.widgets.at(-1).drawWidget(ctx); // ... then the widgets: the badges go over the images
  assert.deepEqual(ctx.texts.map((t) => t.t), ["images", "SciScore 2.00  #2", "SciScore 3.00  #1"]);
  assert.equal(ctx.texts[2].x, 209);                  // inside the second cell
  node.onDrawForeground(ctx);          // the next frame does not hook the widget again
  node.widgets.at(-1).drawWidget(ctx);
  assert.equal(ctx.texts.length, 6);
});

test("a core preview fed by a scoring pack node is badged; other nodes are untouched", async () => {
  const app = await loadExtension();
  const ext = app.extensions[0];
  class Preview {}
  class Other { onExecuted() { this.ran = true; } }
  await ext.beforeRegisterNodeDef(Preview, { name: "PreviewImage" }, app);
  await ext.beforeRegisterNodeDef(Other, { name: "KSampler" }, app);
  assert.equal(Other.prototype.onDrawForeground, undefined);
  const rank = { scienceScores: [5.5] };
  app.graph = { links: { 3: { origin_id: 9 } }, getNodeById: () => rank };
  const preview = Object.assign(new Preview(), {
    size: [300, 400], inputs: [{ type: "IMAGE", link: 3 }],
    widgets: [{ name: "$$canvas-image-preview", y: 40, draw() {} }],
    imgs: [{ naturalWidth: 600, naturalHeight: 300 }], imageIndex: 0,
  });
  preview.onExecuted({ images: [{}] });          // core's own message: no summary box added
  assert.equal(preview.widgets.length, 1);
  const ctx = fakeCtx();
  preview.onDrawForeground(ctx);
  preview.widgets[0].draw(ctx);
  assert.deepEqual(ctx.texts.map((t) => t.t), ["SciScore 5.50  #1"]);
  // 600 x 300 fitted into 300 x (400 - 40 - 15): 300 x 150, centred; the badge at its corner
  assert.equal(ctx.texts[0].x, 9);
  assert.equal(ctx.texts[0].y, 40 + (345 - 150) / 2 + 19);
});
