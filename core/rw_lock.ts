/**
 * A readers-writer lock for promises.
 *
 * @module
 */

/**
 * Lets many readers in at once, or one writer alone; waiting writers go before readers that
 * arrive after them, so writes are not starved. Acquiring an uncontended lock costs no await:
 * `acquire` returns `undefined` when the lock was granted at once.
 *
 * @example
 * ```ts
 * import { RwLock } from "@qcowlab/qcowlab";
 *
 * const lock = new RwLock();
 * await lock.exclusive(async () => {
 *   // metadata changes here
 * });
 * const value = await lock.shared(() => Promise.resolve(42));
 * console.log(value); // 42
 * ```
 */
export class RwLock {
  #readers = 0;
  #writer = false;
  #queue: { exclusive: boolean; grant: () => void }[] = [];

  /** Runs `fn` while holding the lock shared with other readers. */
  async shared<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.acquireShared();
    if (wait) await wait;
    try {
      return await fn();
    } finally {
      this.releaseShared();
    }
  }

  /** Runs `fn` while holding the lock alone. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.acquireExclusive();
    if (wait) await wait;
    try {
      return await fn();
    } finally {
      this.releaseExclusive();
    }
  }

  /** Takes a shared hold; returns a promise to await only when the lock was not free. */
  acquireShared(): Promise<void> | undefined {
    if (!this.#writer && this.#queue.length === 0) {
      this.#readers++;
      return undefined;
    }
    return new Promise((grant) => this.#queue.push({ exclusive: false, grant }));
  }

  /** Gives back a shared hold. */
  releaseShared(): void {
    this.#readers--;
    this.#next();
  }

  /** Takes the lock alone; returns a promise to await only when the lock was not free. */
  acquireExclusive(): Promise<void> | undefined {
    if (!this.#writer && this.#readers === 0 && this.#queue.length === 0) {
      this.#writer = true;
      return undefined;
    }
    return new Promise((grant) => this.#queue.push({ exclusive: true, grant }));
  }

  /** Gives back an exclusive hold. */
  releaseExclusive(): void {
    this.#writer = false;
    this.#next();
  }

  #next(): void {
    while (this.#queue.length > 0 && !this.#writer) {
      const head = this.#queue[0]!;
      if (head.exclusive) {
        if (this.#readers > 0) return;
        this.#queue.shift();
        this.#writer = true;
        head.grant();
        return;
      }
      this.#queue.shift();
      this.#readers++;
      head.grant();
    }
  }
}
