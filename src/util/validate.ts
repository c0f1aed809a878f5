// Option validation at the public boundary: messages name the option and the bad value.

export function describeValue(value: unknown): string {
  if (typeof value === 'string') return `"${value}" (string)`;
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array`;
  if (typeof value === 'object') return 'an object';
  return `${String(value)} (${typeof value})`;
}

export function expectPositiveInteger(name: string, value: unknown, max?: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw new TypeError(`Expected \`${name}\` to be a positive integer, got ${describeValue(value)}`);
  }
  if (max !== undefined && value > max) {
    throw new TypeError(`Expected \`${name}\` to be at most ${max}, got ${value}`);
  }
  return value;
}

export function expectOneOf<T extends string>(name: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    throw new TypeError(
      `Expected \`${name}\` to be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describeValue(value)}`,
    );
  }
  return value as T;
}

export function expectString(name: string, value: unknown, pattern?: RegExp, hint?: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new TypeError(`Expected \`${name}\` to be a non-empty string, got ${describeValue(value)}`);
  }
  if (pattern && !pattern.test(value)) {
    throw new TypeError(`Invalid \`${name}\` ${describeValue(value)}: ${hint ?? `must match ${pattern}`}`);
  }
  return value;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) &&
    (Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null);
}
