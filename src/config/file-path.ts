/**
 * A path in the config: relative paths are taken from the config file's folder, so a config
 * and the files it names move together.
 */
import path from 'node:path';
import { z } from 'zod';

export function filePathIn(baseDir: string) {
  return z
    .string()
    .min(1)
    .transform((p) => path.resolve(baseDir, p));
}
