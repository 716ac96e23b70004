// Long server work as jobs (docs/api.md): POST starts one, GET /api/jobs/{id} polls it,
// DELETE cancels it. One place for the polling loop the analysis views share.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * POST `body` to `url`, then poll the job it starts until it ends; resolves to its result.
 * `job` is the caller's handle: `job.url` is set once the job exists, `job.cancelled`
 * (set by `cancelJob`) makes the last polls quicker. A cancelled job rejects with
 * `{aborted: true}`, a failed one with the server's message.
 */
export async function runJob(ctx, url, body, onProgress, job) {
  const started = await ctx.api.postJson(url, body);
  job.url = started.url;
  for (;;) {
    const state = await ctx.request(started.url);
    onProgress(state);
    if (state.state === "succeeded") return state.result;
    if (state.state === "failed") throw new Error(state.error?.detail || "the study failed on the server");
    if (state.state === "cancelled") throw Object.assign(new Error("cancelled"), { aborted: true });
    await sleep(job.cancelled ? 100 : 300);
  }
}

/** Ask the server to cancel `job` (a no-op before it exists or after it ended). */
export async function cancelJob(ctx, job) {
  if (!job?.url) return;
  job.cancelled = true;
  try {
    await ctx.request(job.url, { init: { method: "DELETE" } });
  } catch {
    /* already finished */
  }
}
