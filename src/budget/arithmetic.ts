// Pure budget arithmetic.

export interface Usage {
  cpus: number;
  memoryMiB: number;
}

/** Does `request` fit beside `used` within `limits`? */
export function fits(request: Usage, used: Usage, limits: Usage): boolean {
  return used.cpus + request.cpus <= limits.cpus && used.memoryMiB + request.memoryMiB <= limits.memoryMiB;
}
