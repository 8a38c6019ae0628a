#!/usr/bin/env python3
"""Fail on an import cycle between the library's source files.

Module = file. An edge A -> B is a path in A that names B: `crate::x::y`
(in a `use` or inline), `super::...` or `self::...`, resolved to the
deepest file of the path that exists (src/x/y.rs or src/x/y/mod.rs).
A path may also start with a child module's name (`child::f()`). Edges
from a module into its own subtree are not counted: a parent declaring,
re-exporting and calling its children is the tree itself; the children
naming the parent back (`super::X`) are counted. `super::` inside an inline
`mod tests { }` names the file itself. Comments and strings are ignored.

The check runs twice: between files, and between subtrees (each edge
lifted to the two children of the closest common module that hold its
ends, a file `x.rs` or a whole directory module `x/`), so `state.rs`
importing `supervisor/machine.rs` while `supervisor/mod.rs` imports
`state.rs` is a cycle (`state.rs -> supervisor/ -> state.rs`).

Every cycle found is printed as `a.rs -> b.rs -> a.rs`. A cycle listed in
the allowlist (default .ci/cycles-allowed.txt: one cycle a line, the files
in any rotation, `#` comments) is reported but does not fail; an allowed
cycle that no longer exists fails too, so the list only shrinks.

Usage: cycles.py [--root SRC_DIR] [--allow FILE] [--edges]
       cycles.py --self-test   (checks the checker on temporary trees)
"""

import os
import re
import sys
import tempfile

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals (keeps newlines and braces
    outside them), so paths and braces inside them are not read as code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            out.append('""')
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            out.append('""')
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Tree:
    def __init__(self, root):
        self.root = os.path.abspath(root)

    def module_file(self, segs):
        """File of module path `segs` (from the crate root), or None."""
        base = os.path.join(self.root, *segs)
        if not segs:
            return os.path.join(self.root, "lib.rs")
        for cand in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(cand):
                return cand
        return None

    def module_path(self, path):
        """Module path of a file: src/a/b.rs and src/a/b/mod.rs -> [a, b]."""
        rel = os.path.relpath(path, self.root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        return rel

    def files(self):
        for d, _, fs in os.walk(self.root):
            for f in sorted(fs):
                if f.endswith(".rs"):
                    yield os.path.join(d, f)

    def resolve(self, segs):
        """Deepest existing file along an absolute module path."""
        best = None
        for k in range(1, len(segs) + 1):
            f = self.module_file(segs[:k])
            if f is None:
                break
            best = f
        return best


def is_below(tree, f, module):
    """True when file `f` is a strict descendant of `module`."""
    mp = tree.module_path(f)
    return len(mp) > len(module) and mp[:len(module)] == list(module)


def use_paths(tree_text):
    """Expands `use` trees to full paths: `a::{b, c::{d}}` -> a::b, a::c::d."""
    out = []

    def expand(prefix, s):
        s = s.strip()
        if not s:
            return
        m = re.match(r"^((?:" + IDENT + r"\s*::\s*)*)\{(.*)\}$", s, re.S)
        if m:
            head = [p.strip() for p in m.group(1).split("::") if p.strip()]
            depth, cur, parts = 0, "", []
            for ch in m.group(2):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    parts.append(cur)
                    cur = ""
                else:
                    cur += ch
            parts.append(cur)
            for p in parts:
                expand(prefix + head, p)
            return
        s = re.sub(r"\s+as\s+" + IDENT + r"$", "", s)
        out.append(prefix + [p.strip() for p in s.split("::") if p.strip()])

    expand([], tree_text)
    return out


def edges_of(tree, path):
    text = strip_comments_and_strings(open(path, encoding="utf-8").read())
    here = tree.module_path(path)
    # Inline modules: track `mod name {` so `super::` inside them is right.
    # depth_at[i] = inline-module nesting at character i.
    inline = []  # stack of brace depths at which an inline mod opened
    brace = 0
    nest_at = [0] * (len(text) + 1)
    mod_open = re.compile(r"\bmod\s+" + IDENT + r"\s*\{")
    pending = set(m.end() - 1 for m in mod_open.finditer(text))
    for i, ch in enumerate(text):
        if ch == "{":
            brace += 1
            if i in pending:
                inline.append(brace)
        elif ch == "}":
            if inline and inline[-1] == brace:
                inline.pop()
            brace -= 1
        nest_at[i] = len(inline)

    def absolute(segs, at):
        segs = list(segs)
        nest = nest_at[at]
        if segs[0] == "crate":
            return segs[1:]
        if segs[0] in children:
            return list(here) + segs
        if segs[0] in ("self", "super"):
            # Inline modules sit below the file's module; only the
            # `super`s that climb past them leave the file.
            base = list(here)
            level = nest
            while segs and segs[0] in ("self", "super"):
                if segs.pop(0) == "super":
                    if level > 0:
                        level -= 1
                    else:
                        base = base[:-1]
            return base + segs if level == 0 else None
        return None

    # Child modules declared here (`mod x;`): a path may start with their name.
    children = set(m.group(1) for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", text))
    roots = ("crate", "self", "super") + tuple(sorted(children))

    found = set()
    # `use` declarations (possibly spanning lines, with brace trees).
    for m in re.finditer(r"\buse\s+([^;]*);", text):
        for segs in use_paths(m.group(1)):
            if segs and segs[0] in roots:
                a = absolute(segs, m.start())
                if a:
                    found.add(tree.resolve(a))
    # Inline paths: crate::a::b, super::x (not preceded by `::`/ident).
    root_re = "|".join(re.escape(r) for r in roots)
    for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:" + root_re + r")(?:\s*::\s*" + IDENT + r")+)", text):
        segs = [p.strip() for p in m.group(1).split("::")]
        if segs[0] == "self" and len(segs) < 2:
            continue
        a = absolute(segs, m.start())
        if a:
            found.add(tree.resolve(a))
    found.discard(None)
    found.discard(path)
    # A parent assembling its own children (declaring, re-exporting,
    # calling them) is the tree itself, not an import: only edges that
    # leave a module's own subtree count.
    return set(f for f in found if not is_below(tree, f, here))


def find_cycles(graph):
    """Tarjan's SCCs; for each strongly connected component a shortest
    cycle through its smallest file is printed (enough to name it), plus
    every 2-cycle inside it (the common case, each fixed on its own)."""
    index, low, stack, on, sccs = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sccs


def shortest_cycle(graph, comp, start):
    members = set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return None


def canonical(cycle):
    """A cycle (without the repeated last file) in its smallest rotation."""
    c = cycle[:-1] if cycle[0] == cycle[-1] else cycle
    k = c.index(min(c))
    return tuple(c[k:] + c[:k])


def read_allow(path):
    allowed = set()
    if not path or not os.path.exists(path):
        return allowed
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            allowed.add(canonical([p.strip() for p in line.split("->")]))
    return allowed


def check(root, allow_path, show_edges=False, out=sys.stdout):
    tree = Tree(root)
    graph = file_graph(tree)
    if show_edges:
        for a in sorted(graph):
            for b in graph[a]:
                print(f"{a} -> {b}", file=out)
    cycles = cycles_of(graph)
    # The same between subtrees: a file importing something under a sibling
    # directory module that imports the file back (state.rs -> supervisor/
    # -> state.rs) is a cycle between the crates they could become.
    subtree = {}
    for a in graph:
        for b in graph[a]:
            na, nb = subtree_nodes(tree, a, b)
            if na != nb:
                subtree.setdefault(na, set()).add(nb)
                subtree.setdefault(nb, set())
    cycles |= set(c for c in cycles_of(subtree) if any(n.endswith("/") for n in c))
    allowed = read_allow(allow_path)
    new = sorted(c for c in cycles if c not in allowed)
    gone = sorted(c for c in allowed if c not in cycles)
    for c in sorted(cycles):
        tag = "allowed" if c in allowed else "CYCLE"
        print(f"{tag}: {' -> '.join(c + (c[0],))}", file=out)
    for c in gone:
        print(f"STALE (no longer a cycle, remove it from the allowlist): {' -> '.join(c + (c[0],))}", file=out)
    print(f"{len(graph)} files, {sum(len(v) for v in graph.values())} edges, "
          f"{len(cycles)} cycles ({len(cycles) - len(new)} allowed), {len(new)} new, {len(gone)} stale", file=out)
    return not new and not gone


def file_graph(tree):
    graph = {}
    for f in tree.files():
        rel = os.path.relpath(f, tree.root)
        graph[rel] = sorted(os.path.relpath(t, tree.root) for t in edges_of(tree, f))
    return graph


def cycles_of(graph):
    cycles = set()
    for comp in find_cycles(graph):
        # Every 2-cycle, then one shortest cycle through each file not yet
        # on a reported cycle: together they name every back edge to fix.
        covered = set()
        for a in comp:
            for b in graph[a]:
                if b in comp and a in graph.get(b, ()) and a < b:
                    cycles.add((a, b))
                    covered.update((a, b))
        for v in comp:
            if v not in covered:
                c = shortest_cycle(graph, comp, v)
                if c:
                    cycles.add(canonical(c))
                    covered.update(c)
    return cycles


def subtree_nodes(tree, a, b):
    """The two children of a's and b's closest common module that hold
    them: a file (`x.rs`) or a whole directory module (`x/`)."""
    ma, mb = tree.module_path(os.path.join(tree.root, a)), tree.module_path(os.path.join(tree.root, b))
    k = 0
    while k < min(len(ma), len(mb)) and ma[k] == mb[k]:
        k += 1

    def node(rel, mp):
        if len(mp) == k:
            return rel  # the common module's own file
        name = "/".join(mp[:k + 1])
        return name + "/" if os.path.isdir(os.path.join(tree.root, name)) else name + ".rs"
    return node(a, ma), node(b, mb)


def self_test():
    import io

    def tree_with(files, allow=None):
        d = tempfile.mkdtemp(prefix="cycles-")
        for rel, body in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(body)
        allow_path = None
        if allow is not None:
            allow_path = os.path.join(d, "allowed.txt")
            with open(allow_path, "w") as f:
                f.write(allow)
        return d, allow_path

    base = {
        "lib.rs": "pub mod a;\npub mod b;\n",
        "a/mod.rs": "pub mod inner;\nuse crate::b::thing;\n",
        "a/inner.rs": "// use crate::b::loop_back; (a comment, not an edge)\n"
                      "const S: &str = \"crate::b::x\";\n"
                      "fn f() { super::x(); }\n"
                      "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        "b.rs": "pub fn thing() {}\n#[cfg(test)]\nmod tests { use super::super::b; }\n",
    }
    failures = []

    def expect(name, files, ok, allow=None, contains=None):
        d, allow_path = tree_with(files, allow)
        buf = io.StringIO()
        got = check(d, allow_path, out=buf)
        text = buf.getvalue()
        if got != ok or (contains and contains not in text):
            failures.append(f"{name}: expected {'pass' if ok else 'fail'}"
                            f"{' with ' + repr(contains) if contains else ''}, got:\n{text}")

    # No cycle: a -> b, inner -> a (super::), comments/strings/tests ignored.
    expect("acyclic", base, True)
    # b imports a back: a 2-cycle, named.
    cyc = dict(base, **{"b.rs": "use crate::a::{self, Foo as F};\npub fn thing() {}\n"})
    expect("two-cycle", cyc, False, contains="CYCLE: a/mod.rs -> b.rs -> a/mod.rs")
    # A longer cycle through an inline path and super::: a -> b -> inner -> a.
    long = dict(base, **{"b.rs": "pub fn thing() { crate::a::inner::f(); }\n"})
    expect("three-cycle", long, False, contains="a/inner.rs -> a/mod.rs -> b.rs -> a/inner.rs")
    # The same cycle allowed (any rotation) passes; a stale entry fails.
    expect("allowed", cyc, True,
           allow="# known\nb.rs -> a/mod.rs -> b.rs  # issue 16\na/ -> b.rs -> a/  # issue 16\n")
    # Files that form no cycle but whose subtrees do: b.rs -> a/inner.rs,
    # a/mod.rs -> b.rs (a sibling file and a directory module).
    sub = dict(base, **{"b.rs": "pub fn thing() { crate::a::inner::g(); }\n",
                        "a/inner.rs": "pub fn g() {}\n"})
    expect("subtree-cycle", sub, False, contains="CYCLE: a/ -> b.rs -> a/")
    expect("stale", base, False, allow="b.rs -> a/mod.rs\n", contains="STALE")
    if failures:
        print("cycles.py self-test FAILED:\n" + "\n".join(failures))
        return False
    print("cycles.py self-test: ok (acyclic passes; 2-, 3- and subtree cycles fail and are named; allowlist; stale entries fail)")
    return True


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(here, "..", "src")
    allow = os.path.join(here, "cycles-allowed.txt")
    show_edges = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--self-test":
            return 0 if self_test() else 1
        elif a == "--root":
            root = args.pop(0)
        elif a == "--allow":
            allow = args.pop(0)
        elif a == "--edges":
            show_edges = True
        else:
            print(__doc__, file=sys.stderr)
            return 2
    return 0 if check(root, allow, show_edges) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
