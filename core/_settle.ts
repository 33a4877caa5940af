/**
 * How the synchronous devices (memory, copy-on-write pages) keep the promise contract of
 * a block device: an error is a rejected promise, never a throw.
 *
 * @module
 */

/**
 * Runs `action` now and returns a promise settled with its outcome: resolved when it returns,
 * rejected with what it threw.
 *
 * @example A throw becomes a rejection
 * ```ts
 * import { settle } from "./_settle.ts";
 *
 * const result = settle(() => {
 *   throw new Error("closed");
 * });
 * console.log(await result.catch((e) => e.message)); // closed
 * ```
 *
 * @param action The synchronous work.
 * @returns A settled promise.
 */
export function settle(action: () => void): Promise<void> {
  try {
    action();
    return Promise.resolve();
  } catch (error) {
    return Promise.reject(error);
  }
}
