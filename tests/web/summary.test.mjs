// The frontend extension's logic (web/js/summary.js), with node's own test runner.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  afterDraw, badgeLabels, badgesForBoxes, imageBoxes, isPackNode, scoresOf, summaryText,
  upstreamScores,
} from "../../web/js/summary.js";

test("pack nodes are told apart by their class name", () => {
  assert.equal(isPackNode({ name: "ScienceT2I_SciScore" }), true);
  assert.equal(isPackNode({ name: "PreviewImage" }), false);
  assert.equal(isPackNode(undefined), false);
});

test("the summary joins the text entries of list-mapped runs and skips empty ones", () => {
  assert.equal(summaryText({ text: ["a: 1.0", "", "b: 2.0"] }), "a: 1.0\nb: 2.0");
  assert.equal(summaryText({ text: [] }), null);
  assert.equal(summaryText({ images: [] }), null);
  assert.equal(summaryText(null), null);
});

test("scores are numbers or nothing, never a guess", () => {
  assert.deepEqual(scoresOf({ scores: [1.5, "2.25"] }), [1.5, 2.25]);
  assert.equal(scoresOf({ scores: [1.5, "n/a"] }), null);
  assert.equal(scoresOf({ scores: [] }), null);
  assert.equal(scoresOf({}), null);
});

test("badges carry the score and the rank among the images (ties keep image order)", () => {
  assert.deepEqual(badgeLabels([20.5, 31.25, 20.5]),
                   ["SciScore 20.50  #2", "SciScore 31.25  #1", "SciScore 20.50  #3"]);
  assert.deepEqual(badgeLabels([3], "", 1), ["3.0  #1"]);
  assert.deepEqual(badgeLabels(null), []);
});

test("one previewed image: scaled to fit between the widget top and the caption, centred", () => {
  // node 400 x 515, preview from y = 100, 15 px caption: 400 x 400 left; an 800 x 400
  // image scales by 0.5 to 400 x 200, centred in the 400 px height
  const [box] = imageBoxes({ nodeWidth: 400, nodeHeight: 515, shiftY: 100, textHeight: 15,
                             sizes: [{ w: 800, h: 400 }] });
  assert.deepEqual(box, { x: 0, y: 100 + (400 - 200) / 2, w: 400, h: 200 });
  // never enlarged past its own size
  const [small] = imageBoxes({ nodeWidth: 400, nodeHeight: 500, shiftY: 100,
                               sizes: [{ w: 100, h: 50 }] });
  assert.deepEqual(small, { x: 150, y: 275, w: 100, h: 50 });
  assert.deepEqual(imageBoxes({ nodeWidth: 1, nodeHeight: 1, sizes: [] }), []);
});

test("a grid of images: each fitted and centred in its cell", () => {
  // cells of 200 x 200 from y = 100; a 400 x 200 image fills the width, 100 high, centred
  const rects = [[0, 100, 200, 200], [200, 100, 200, 200]];
  const sizes = [{ w: 400, h: 200 }, { w: 100, h: 100 }];
  const boxes = imageBoxes({ nodeWidth: 400, nodeHeight: 500, imageRects: rects, sizes });
  assert.deepEqual(boxes[0], { x: 0, y: 150, w: 200, h: 100 });
  assert.deepEqual(boxes[1], { x: 200, y: 100, w: 200, h: 200 });
  const labels = badgeLabels([1, 2]);
  assert.deepEqual(badgesForBoxes(labels, boxes).map((b) => b.text), labels);
  // a clicked image is shown alone: its own badge
  const one = imageBoxes({ nodeWidth: 400, nodeHeight: 500, imageRects: rects, imageIndex: 1,
                           sizes });
  assert.deepEqual(badgesForBoxes(labels, one, 1).map((b) => b.text), [labels[1]]);
  // scores that are not for these images draw nothing
  assert.deepEqual(badgesForBoxes(badgeLabels([1, 2, 3]), boxes), []);
});

test("badges are drawn after the preview widget has drawn its images, hooked once", () => {
  const calls = [];
  const widget = { drawWidget(ctx) { calls.push(["images", ctx]); } };
  assert.equal(afterDraw(widget, (ctx) => calls.push(["badges", ctx])), true);
  assert.equal(afterDraw(widget, () => calls.push(["twice"])), false);
  widget.drawWidget("ctx");
  assert.deepEqual(calls, [["images", "ctx"], ["badges", "ctx"]]);
  // older frontends name it draw
  const old = { draw() { calls.push(["old"]); } };
  assert.equal(afterDraw(old, () => calls.push(["after old"])), true);
  old.draw("c");
  assert.deepEqual(calls.slice(-2), [["old"], ["after old"]]);
  assert.equal(afterDraw(undefined, () => {}), false);
});

test("a core preview node finds the scores of the pack node that feeds it", () => {
  const rank = { id: 7, scienceScores: [3, 1] };
  const graph = { links: { 11: { origin_id: 7 } }, getNodeById: (id) => (id === 7 ? rank : null) };
  const preview = { inputs: [{ name: "images", type: "IMAGE", link: 11 }] };
  assert.deepEqual(upstreamScores(preview, graph), [3, 1]);
  // the newer frontend keeps links in a Map
  const mapGraph = { links: new Map([[11, { origin_id: 7 }]]), getNodeById: graph.getNodeById };
  assert.deepEqual(upstreamScores(preview, mapGraph), [3, 1]);
  assert.equal(upstreamScores({ inputs: [{ type: "IMAGE", link: null }] }, graph), null);
});
