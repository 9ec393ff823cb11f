// The console's own script (the pages work without it): times in the browser's zone,
// UTC kept on hover; forms with data-confirm ask first; a running job's page follows
// its event stream.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) t.textContent = d.toLocaleString();
  }
}
document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:afterSwap", (e) => localTimes(e.target.parentNode || document));
document.addEventListener("submit", (e) => {
  const f = e.target;
  if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) e.preventDefault();
});

// A running job's page follows its event stream: each event is the state block again.
function follow(block) {
  const url = block.dataset.events;
  if (!url || !window.EventSource) return;
  const stream = new EventSource(url);
  stream.addEventListener("state", (e) => {
    const old = document.getElementById("job-state");
    if (!old) return;
    old.outerHTML = e.data;
    const now = document.getElementById("job-state");
    localTimes(now);
    if (!now.dataset.events) stream.close();
  });
}
document.addEventListener("DOMContentLoaded", () => {
  const block = document.getElementById("job-state");
  if (block) follow(block);
});
