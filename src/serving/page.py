"""The demo page GET / serves: choose or drop an image, see the top-5 classes with bars (POST /predict) and where the
model looks (POST /explain). Self-contained, no script or style from elsewhere: it works offline."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vitlab demo: {{model}}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 46rem; color: #222; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5rem; text-align: center; }
  #drop.over { background: #eef; }
  #result { display: flex; gap: 2rem; margin-top: 1.5rem; align-items: flex-start; }
  figure { margin: 0; text-align: center; }
  figure img { width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }
  #top { list-style: none; padding: 0; margin: 0; flex: 1; }
  #top li { display: grid; grid-template-columns: minmax(2rem, auto) 12rem 4rem; gap: .6rem; align-items: center;
            margin: .3rem 0; }
  .track { background: #e8e8ee; border-radius: 3px; }
  .bar { background: #3b6fd8; height: 1rem; border-radius: 3px; }
  .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  #status { color: #a00; min-height: 1.2em; }
</style>
</head>
<body>
<h1>vitlab demo</h1>
<p>Model: <code>{{model}}</code>. Choose or drop an image: the server resizes and normalises it as the model was
trained.</p>
<div id="drop"><input type="file" id="file" accept="image/*"><p>or drop an image here</p></div>
<p id="status"></p>
<div id="result" hidden>
  <figure><img id="input" alt="the image"><figcaption>the image</figcaption></figure>
  <figure><img id="overlay" alt="where the model looks"><figcaption>where the model looks</figcaption></figure>
  <ol id="top"></ol>
</div>
<script>
const status = document.getElementById("status");
async function post(path, file) {
  const form = new FormData();
  form.append("file", file);
  const response = await fetch(path, { method: "POST", body: form });
  if (!response.ok) {
    const detail = await response.json().catch(() => ({}));
    throw new Error(detail.detail || response.statusText);
  }
  return response;
}
async function show(file) {
  status.textContent = "classifying " + file.name + " ...";
  document.body.dataset.state = "busy";
  try {
    const [prediction, overlay] = await Promise.all([
      post("predict?k=5", file).then((r) => r.json()), post("explain", file).then((r) => r.blob()),
    ]);
    const top = document.getElementById("top");
    top.replaceChildren(...prediction.predictions[0].top.map(({ label, probability }) => {
      const row = document.createElement("li");
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = (100 * probability).toFixed(1) + "%";
      const track = document.createElement("div");
      track.className = "track";
      track.append(bar);
      const value = document.createElement("span");
      value.textContent = (100 * probability).toFixed(1) + " %";
      row.append(name, track, value);
      return row;
    }));
    document.getElementById("input").src = URL.createObjectURL(file);
    document.getElementById("overlay").src = URL.createObjectURL(overlay);
    document.getElementById("result").hidden = false;
    status.textContent = "";
    document.body.dataset.state = "done";
  } catch (err) {
    status.textContent = "error: " + err.message;
    document.body.dataset.state = "error";
  }
}
document.getElementById("file").addEventListener("change", (e) => e.target.files[0] && show(e.target.files[0]));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) show(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
