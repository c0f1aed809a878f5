// Checks the imports of a source tree against an allow-list of dependencies between its modules,
// the way Playwright's DEPS lists guard its folders. A module is a folder under the root, or a file
// at its top (`errors.ts` and `errors/` are one module, `errors`). Every import counts: static
// `import ... from`, `export ... from`, `import type`, and `import()`.
import fs from 'node:fs/promises';
import path from 'node:path';
import ts from 'typescript';

export interface DependencyRules {
  /** Module -> the modules it may import. A module missing here is itself a violation. */
  modules: Readonly<Record<string, readonly string[]>>;
  /** Module -> the npm packages and `node:` builtins it may import, besides `sharedBuiltins`. */
  packages: Readonly<Record<string, readonly string[]>>;
  /** `node:` builtins every module may import. */
  sharedBuiltins: readonly string[];
  /**
   * Host tools (the fields of probeHost()'s facts: `requireTool(host.qemuImg, ...)`, `host.setpriv.path`)
   * and programs run by name (`run('qemu-img', ...)`) -> the only modules that may run them.
   */
  tools: Readonly<Record<string, readonly string[]>>;
  /** Modules that may name every tool without running it (the host probe and doctor). */
  toolsExempt: readonly string[];
}

export interface Violation {
  /** Relative to the root's parent, e.g. src/qemu/argv.ts. */
  file: string;
  line: number;
  /** What was imported or run. */
  what: string;
  /** The rule it breaks, in words. */
  rule: string;
}

interface Import {
  file: string;
  line: number;
  specifier: string;
}

/** The module a file (or an import's target) belongs to, or undefined outside the root. */
function moduleOf(root: string, file: string): string | undefined {
  const relative = path.relative(root, file);
  if (relative.startsWith('..') || path.isAbsolute(relative)) return undefined;
  return relative.split(path.sep)[0]!.replace(/\.ts$/, '');
}

function packageOf(specifier: string): string {
  if (specifier.startsWith('node:')) return specifier;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

const list = (names: readonly string[]) => (names.length ? names.join(', ') : 'nothing');

/** Every violation of `rules` in the .ts files below `root`; an empty list when the tree keeps them. */
export async function checkDependencies(root: string, rules: DependencyRules): Promise<Violation[]> {
  const display = (file: string) => path.relative(path.dirname(root), file);
  const files = (await fs.readdir(root, { recursive: true })).filter((f) => f.endsWith('.ts')).map((f) => path.join(root, f)).sort();
  const violations: Violation[] = [];
  const edges = new Map<string, Map<string, Import>>();
  for (const file of files) {
    const from = moduleOf(root, file)!;
    const allowed = rules.modules[from];
    const source = ts.createSourceFile(file, await fs.readFile(file, 'utf8'), ts.ScriptTarget.Latest, true);
    if (!allowed) {
      violations.push({ file: display(file), line: 1, what: from, rule: `module ${from} has no entry in the allow-list: add what it may import` });
      continue;
    }
    for (const found of importsOf(source)) {
      const at = { file: display(file), line: found.line };
      if (!found.specifier.startsWith('.')) {
        const name = packageOf(found.specifier);
        const mayUse = rules.packages[from] ?? [];
        if (!(name.startsWith('node:') && rules.sharedBuiltins.includes(name)) && !mayUse.includes(name)) {
          const owners = Object.keys(rules.packages).filter((m) => rules.packages[m]!.includes(name));
          violations.push({ ...at, what: found.specifier, rule: `${from}/ may not import ${name}${owners.length ? `; only ${owners.map((m) => `${m}/`).join(', ')} may` : ''}` });
        }
        continue;
      }
      const to = moduleOf(root, path.resolve(path.dirname(file), found.specifier));
      if (to === undefined) {
        violations.push({ ...at, what: found.specifier, rule: `an import must stay inside ${path.basename(root)}/` });
      } else if (to !== from) {
        if (!allowed.includes(to)) violations.push({ ...at, what: found.specifier, rule: `${from}/ may import only ${list(allowed)}; not ${to}` });
        const out = edges.get(from) ?? new Map<string, Import>();
        if (!out.has(to)) out.set(to, { file: display(file), line: found.line, specifier: found.specifier });
        edges.set(from, out);
      }
    }
    if (!rules.toolsExempt.includes(from)) {
      for (const use of toolsRun(source, Object.keys(rules.tools))) {
        const owners = rules.tools[use.tool]!;
        if (!owners.includes(from)) violations.push({ file: display(file), line: use.line, what: use.how, rule: `only ${owners.map((m) => `${m}/`).join(', ')} may run ${use.tool}` });
      }
    }
  }
  for (const cycle of cycles(edges)) {
    const steps = cycle.map((m, i) => {
      const edge = edges.get(m)!.get(cycle[(i + 1) % cycle.length]!)!;
      return `${edge.file}:${edge.line} imports ${edge.specifier}`;
    });
    const first = edges.get(cycle[0]!)!.get(cycle[1 % cycle.length]!)!;
    violations.push({ file: first.file, line: first.line, what: [...cycle, cycle[0]].join(' -> '), rule: `an import cycle between modules (${steps.join('; ')})` });
  }
  return violations;
}

/** The npm packages (not node: builtins) the .ts files below `root` import. */
export async function importedPackages(root: string): Promise<string[]> {
  const names = new Set<string>();
  for (const file of (await fs.readdir(root, { recursive: true })).filter((f) => f.endsWith('.ts'))) {
    const source = ts.createSourceFile(file, await fs.readFile(path.join(root, file), 'utf8'), ts.ScriptTarget.Latest, true);
    for (const { specifier } of importsOf(source)) if (!specifier.startsWith('.') && !specifier.startsWith('node:')) names.add(packageOf(specifier));
  }
  return [...names].sort();
}

/** Static imports and re-exports (types included) and dynamic import() with a literal specifier. */
function importsOf(source: ts.SourceFile): Import[] {
  const found: Import[] = [];
  const add = (node: ts.Node, specifier: ts.Expression | undefined) => {
    if (specifier && ts.isStringLiteralLike(specifier)) {
      found.push({ file: source.fileName, line: source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1, specifier: specifier.text });
    }
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node, node.moduleSpecifier);
    else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) add(node, node.arguments[0]);
    else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node, node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** Host tools a file runs: `requireTool(x.TOOL, ...)`, `x.TOOL.path`, or a program named in run/spawn/execa. */
function toolsRun(source: ts.SourceFile, tools: string[]): { tool: string; line: number; how: string }[] {
  const uses: { tool: string; line: number; how: string }[] = [];
  const lineOf = (node: ts.Node) => source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
  const visit = (node: ts.Node): void => {
    if (ts.isCallExpression(node) && ts.isIdentifier(node.expression)) {
      const [first] = node.arguments;
      const callee = node.expression.text;
      if (callee === 'requireTool' && first && ts.isPropertyAccessExpression(first) && tools.includes(first.name.text)) {
        uses.push({ tool: first.name.text, line: lineOf(node), how: node.getText(source).split('\n')[0]! });
      } else if (['run', 'spawn', 'execa', 'execFile'].includes(callee) && first && ts.isStringLiteralLike(first) && tools.includes(first.text)) {
        uses.push({ tool: first.text, line: lineOf(node), how: `${callee}('${first.text}', ...)` });
      }
    }
    if (ts.isPropertyAccessExpression(node) && node.name.text === 'path' && ts.isPropertyAccessExpression(node.expression) && tools.includes(node.expression.name.text)) {
      uses.push({ tool: node.expression.name.text, line: lineOf(node), how: node.getText(source) });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return uses;
}

/** The cycles of the module graph, one per strongly connected component (Tarjan), as module lists. */
function cycles(edges: Map<string, Map<string, Import>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const found: string[][] = [];
  const connect = (module: string): void => {
    index.set(module, index.size);
    low.set(module, index.get(module)!);
    stack.push(module);
    for (const next of edges.get(module)?.keys() ?? []) {
      if (!index.has(next)) {
        connect(next);
        low.set(module, Math.min(low.get(module)!, low.get(next)!));
      } else if (stack.includes(next)) {
        low.set(module, Math.min(low.get(module)!, index.get(next)!));
      }
    }
    if (low.get(module) !== index.get(module)) return;
    const component: string[] = [];
    let top: string;
    do {
      top = stack.pop()!;
      component.unshift(top);
    } while (top !== module);
    if (component.length > 1) found.push(pathThrough(component, edges));
  };
  for (const module of [...edges.keys()].sort()) if (!index.has(module)) connect(module);
  return found;
}

/** One cycle through a strongly connected component, starting at its first module (breadth-first). */
function pathThrough(component: string[], edges: Map<string, Map<string, Import>>): string[] {
  const start = [...component].sort()[0]!;
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length) {
    const at = queue.shift()!;
    for (const next of edges.get(at)?.keys() ?? []) {
      if (!component.includes(next)) continue;
      if (next === start) {
        const cycle = [at];
        while (cycle[0] !== start) cycle.unshift(previous.get(cycle[0]!)!);
        return cycle;
      }
      if (!previous.has(next)) {
        previous.set(next, at);
        queue.push(next);
      }
    }
  }
  return component;
}
