// Load a YAML file so that every later complaint can name the file and the line.
import fs from 'node:fs/promises';
import { LineCounter, parseDocument, isNode } from 'yaml';
import { ConfigFileError } from '../errors.ts';

export interface YamlFile {
  file: string;
  data: unknown;
  /** Line (1-based) of the value at `path`, or of the nearest parent that exists. */
  lineOf(path: (string | number)[]): number | undefined;
  /** A ConfigFileError pointing at the value at `path`. */
  error(path: (string | number)[], problem: string): ConfigFileError;
}

export async function loadYamlFile(file: string): Promise<YamlFile> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigFileError(file, undefined, `cannot read the file (${(error as Error).message})`, { cause: error });
  }
  return parseYamlText(file, text);
}

export function parseYamlText(file: string, text: string): YamlFile {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const first = doc.errors[0];
  if (first) {
    const line = lineCounter.linePos(first.pos[0]).line;
    throw new ConfigFileError(file, line, `invalid YAML: ${first.message.split('\n')[0]}`);
  }
  const lineOf = (path: (string | number)[]): number | undefined => {
    for (let depth = path.length; depth >= 0; depth--) {
      const node = depth === 0 ? doc.contents : doc.getIn(path.slice(0, depth), true);
      if (isNode(node) && node.range) return lineCounter.linePos(node.range[0]).line;
    }
    return undefined;
  };
  return {
    file,
    data: doc.toJS(),
    lineOf,
    error: (path, problem) =>
      new ConfigFileError(file, lineOf(path), path.length ? `\`${path.join('.')}\` ${problem}` : problem),
  };
}
