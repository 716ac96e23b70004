// The one job runner: long server work is a job resource (docs/api.md). POST starts one
// (202 → a job), GET {job.url} polls it (progress, done/total), DELETE cancels it. Every
// long action of the dashboard (scans, occlusion, analyses, studies) goes through here.
//
// `job` is the caller's handle: `job.url` is set once the job exists; `cancelJob(job)`
// sets `job.cancelled` (the last polls come quicker) and asks the server to stop. A
// cancelled job rejects with `{aborted: true}`, a failed one with the server's message.

import { ApiError, api, request } from "./api.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const POLL_MS = 300;

/** True for a job state that will not change any more. */
export const isFinished = (state) => ["succeeded", "failed", "cancelled"].includes(state?.state);

/**
 * Follow a job (its JSON, e.g. the POST's 202 body) until it ends; resolves to its result.
 * `onProgress(state)` sees every poll, the first one included.
 */
export async function followJob(started, { onProgress = () => {}, job = {}, failure = "the job failed on the server" } = {}) {
  job.url = started.url;
  let state = started;
  for (;;) {
    onProgress(state);
    if (state.state === "succeeded") return state.result;
    if (state.state === "failed") throw new ApiError(state.error?.detail || failure, { status: state.error?.status ?? 0 });
    if (state.state === "cancelled") throw new ApiError("cancelled", { aborted: true });
    await sleep(job.cancelled ? 100 : POLL_MS);
    state = await request(job.url);
  }
}

/** POST `body` to `url`, then follow the job it starts (see followJob). */
export async function startJob(url, body, options = {}) {
  const job = options.job || {};
  const started = await api.postJson(url, body);
  if (job.cancelled) {
    await cancelJob({ ...job, url: started.url });
    throw new ApiError("cancelled", { aborted: true });
  }
  return followJob(started, { ...options, job });
}

/**
 * The controls of one long action, alike in every view: while its job runs, `run` is disabled,
 * `cancel` (which cancels the job) and `progress` show, and `root.dataset[key]` reads "running";
 * then "done", "cancelled" or "failed". `start(url, body, { onResult, onError, onProgress, failure })`
 * runs one job at a time (a start while one runs is ignored); `onResult(result)` is awaited before
 * the state turns "done", so a page (or a test) that waits for "done" finds the result drawn.
 */
export function jobControls({ root, key = "state", run, cancel, progress = null }) {
  let running = null;
  cancel.addEventListener("click", () => cancelJob(running));
  const idle = (on) => {
    run.disabled = !on;
    cancel.hidden = on;
    if (progress) progress.hidden = on;
  };
  async function start(url, body, { onResult = () => {}, onError = () => {}, onProgress = () => {}, failure } = {}) {
    if (running) return;
    const job = { url: null, cancelled: false };
    running = job;
    idle(false);
    if (progress) progress.value = 0;
    root.dataset[key] = "running";
    try {
      const show = (state) => {
        if (progress) progress.value = state.progress || 0;
        onProgress(state);
      };
      const result = await startJob(url, body, { job, failure, onProgress: show });
      await onResult(result);
      root.dataset[key] = "done";
    } catch (error) {
      root.dataset[key] = error.aborted ? "cancelled" : "failed";
      onError(error);
    } finally {
      running = null;
      idle(true);
    }
  }
  return { start, busy: () => running !== null };
}

/** Ask the server to cancel `job` (a no-op before it exists or after it ended). */
export async function cancelJob(job) {
  if (!job) return;
  job.cancelled = true;
  if (!job.url) return;
  try {
    await request(job.url, { init: { method: "DELETE" } });
  } catch {
    /* already finished */
  }
}
