"""Imports flow one way (STYLE.md rule 13), so one stage can be swapped alone: every import of our own modules,
at the top of a file or inside a function (a lazy import is an arrow too), must be in ALLOWED below."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = {"data." + p.stem for p in (ROOT / "data").glob("*.py")}  # data/ modules, as the stages import them
STAGES = {p.stem for p in ROOT.glob("*.py")}

# file -> the modules of ours it may import. Stages of Eq. (1) at the bottom, measuring files on top of them;
# nothing imports train, evaluate or bench (bench and bench_scale may time train).
ALLOWED = {
    "lora": set(), "project": set(), "panns": set(),
    "meta_response": set(), "predictions": set(), "zoo_tiny": set(),  # O2's reader; generate.py's helpers (the
    # predictions file's reader is evaluate.py's and report.py's too)
    "generate": {"meta_response", "predictions", "zoo_tiny"},
    "preprocess": set(),
    "encode": {"preprocess", "data.store", "data.records"},  # I' -> input tensors; its packed feature cache
    "llm_files": set(),  # where the LLM's weights and tokenizer come from
    "agent": {"llm_files", "lora", "project"},
    "dataset": {"agent", "encode", "lora", "project", "data.records", "data.store"},
    "train": {"agent", "dataset", "encode", "lora", "project", "data.records", "data.store"},
    "chat": {"agent", "encode", "generate", "lora", "project"},
    "probe": {"encode"},
    "metrics": {"panns"},
    "report": {"meta_response", "predictions", "data.records"},
    "evaluate": {"agent", "encode", "generate", "lora", "project", "metrics", "predictions", "probe", "report",
                 "data.records"},
    "benchmarks": {"agent", "encode", "generate", "lora", "project", "metrics", "data.convert", "data.records"},
    "bench": {"agent", "lora", "project", "train"},
    "bench_scale": {"agent", "dataset", "encode", "train", "data.store"},
}


def our_imports(path: Path) -> set[str]:
    """The modules of ours that `path` imports anywhere in it: "agent", "data.records", ... A data/ tool's
    sibling import (`from records import ...`, `from .records import ...`) is named as "data.records"."""
    siblings = {m.split(".")[1] for m in DATA} if path.parent.name == "data" else set()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [f"{module}.{a.name}" if module == "data" else module for a in node.names]
            if node.level:  # from .records import x (inside data/)
                names = [f"data.{module}"]
        for name in names:
            top = name.split(".")[0]
            if name in DATA or (top in STAGES and top != "data"):
                found.add(name if name in DATA else top)
            elif top in siblings:
                found.add(f"data.{top}")
    return found


def test_every_file_imports_only_what_the_one_way_order_allows():
    problems = []
    for path in sorted(ROOT.glob("*.py")):
        if path.stem not in ALLOWED:
            problems.append(f"{path.name}: not in tests/test_imports.py ALLOWED: say which stages it may import")
            continue
        problems += [f"{path.name} imports {m}" for m in sorted(our_imports(path) - ALLOWED[path.stem])]
    for path in sorted((ROOT / "data").glob("*.py")):  # data/ tools import no stage, only each other
        problems += [f"data/{path.name} imports {m}" for m in sorted(our_imports(path) - DATA)]
    assert not problems, "imports against the one-way order (STYLE.md rule 13):\n" + "\n".join(problems)


def test_the_checker_sees_lazy_relative_and_sibling_imports(tmp_path):
    (tmp_path / "data").mkdir()
    stage = tmp_path / "x.py"
    stage.write_text("import os\nfrom agent import ModaVerse\n\ndef f():\n    import train\n    from data.records import a\n")
    assert our_imports(stage) == {"agent", "train", "data.records"}
    tool = tmp_path / "data" / "t.py"
    tool.write_text("from records import a\nfrom .store import b\nimport encode\n")
    assert our_imports(tool) == {"data.records", "data.store", "encode"}
