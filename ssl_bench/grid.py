"""Grid files: base settings + axes, expanded into fully resolved, hashed run configurations.

A grid is a TOML file::

    name = "digits_table3"            # optional, defaults to the file's stem
    description = "..."

    [base]                            # settings shared by every run
    dataset = "digits"
    backbone = "lba_convnet"
    method = "lba"
    steps = 600
    [base.methods.lba]                # a plugin's parameters live under its name
    visit_weight = 1.0

    [axes]                            # cartesian product, in file order
    n_labeled = [20, 50, 100, "all"]
    n_unlabeled = [0, 500, "all"]
    seed = [0, 1, 2, 3, 4]

    [[zip]]                           # optional: keys that vary together (equal lengths)
    method = ["supervised", "lba"]
    lr = [1e-3, 3e-4]

    [[exclude]]                       # optional: drop runs matching every key given
    n_labeled = "all"
    n_unlabeled = 0

    [[table]]                         # paper-style tables rendered from the results
    name = "table3"
    rows = "n_labeled"
    columns = "n_unlabeled"
    metric = "test_error"             # any result column: SET_METRIC[_min|_max|_last_k|_best_val]
    statistic = "median"              # median | mean | best (the best run, by the metric's direction)
    spread = "std"                    # std | none
    format = ".2f"
    caption = "..."
    where = { method = "lba" }        # optional filter
    reference = "../references/x.csv" # optional: the paper's numbers, relative to this file
    select = "val_error"              # optional: where a cell's runs differ in more than the seed
                                      # (a swept knob), show the setting with the best median of
                                      # this column: tuning on validation, reported on test
    coverage = { source_only = { method = "supervised", task = "domain_adaptation" },
                 target_only = { task = "ssl" } }   # optional: (cell - SO) / (TO - SO), in %
                                      # a filter value "{column}" is the cell's column label: one
                                      # SO/TO per column (several domain pairs in one table), e.g.
                                      # source_only = { ..., target = "{column}" },
                                      # target_only = { task = "ssl", dataset = "{column}" }

A run configuration is a nested dict of the protocol keys, ``method``/``backbone``/``dataset``
and their fully defaulted parameters (``methods.NAME``, ...) for exactly the plugins the run
uses. Its id is a hash of that configuration.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError
from .params import Param, id_value, validate
from .protocol import PLUGIN_KEYS, PROTOCOL_PARAMS, SUBTABLES

TOP_KEYS = {"name", "description", "base", "axes", "zip", "exclude", "table", "smoke"}
#: what --smoke sets, before the grid's own [smoke] table and the user's --set options
SMOKE_DEFAULTS = {"steps": 2, "eval_every": 1}
TABLE_KEYS = {"name", "rows", "columns", "metric", "statistic", "spread", "format", "caption", "where", "reference",
              "select", "coverage", "metrics", "row_names"}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    rows: str
    columns: str
    metric: str = "test_error"
    statistic: str = "median"
    spread: str = "std"
    format: str = ".2f"
    caption: str = ""
    where: dict = dataclasses.field(default_factory=dict)
    reference: Path | None = None
    select: str = ""  # a result column: per cell, keep the setting whose median of it is best
    #: domain adaptation: {"source_only": {filter}, "target_only": {filter}}; adds a coverage column
    coverage: dict = dataclasses.field(default_factory=dict)
    #: several metrics as the columns (``columns = "metric"``), e.g. Recall@1/2/4/8; each column is
    #: labeled with its metric's name without the ``test_`` prefix (``recall@1``)
    metrics: list = dataclasses.field(default_factory=list)
    #: the printed names of some rows, {a run's value of ``rows``: the name}: two grids' runs with
    #: the same settings (and so the same run ids, ``label`` included) can print under each paper
    #: table's own row name
    row_names: dict = dataclasses.field(default_factory=dict)


#: the ``columns`` value of a table whose columns are its ``metrics``
METRIC_COLUMNS = "metric"


def metric_label(metric: str) -> str:
    """A metric's column label in a ``columns = "metric"`` table: ``test_recall@1`` -> ``recall@1``."""
    return metric[len("test_"):] if metric.startswith("test_") else metric


@dataclasses.dataclass(frozen=True)
class Run:
    run_id: str
    config: dict  # nested, fully resolved

    def flat(self) -> dict[str, Any]:
        return flatten(self.config)


@dataclasses.dataclass
class Grid:
    name: str
    path: Path | None
    description: str
    base: dict  # flat
    axes: list[list[dict]]  # each axis: a list of flat assignments
    excludes: list[dict]
    tables: list[TableSpec]

    @property
    def axis_keys(self) -> list[str]:
        return [k for axis in self.axes for k in axis[0]]


# ------------------------------------------------------------------------------ loading
def grid_name_of_file(path: Path) -> str:
    try:
        return str(tomllib.loads(Path(path).read_text()).get("name") or Path(path).stem)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return Path(path).stem


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def parse_value(text: str) -> Any:
    """A --set value: a TOML value (``0.5``, ``true``, ``"all"``, ``[1, 2]``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_grid(path: Path, overrides: dict[str, Any] | None = None, smoke: bool = False) -> Grid:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"grid file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read grid file {path}: {exc.strerror}") from None
    return parse_grid(doc, path=path, overrides=overrides, smoke=smoke)


def smoke_overrides(doc: dict, where: str) -> dict[str, Any]:
    """--smoke: every run of the grid end to end in seconds (2 steps, the first seed only, plus
    the grid's own ``[smoke]`` settings), keeping the grid's shape and tables."""
    settings = dict(SMOKE_DEFAULTS)
    seeds = doc.get("axes", {}).get("seed") if isinstance(doc.get("axes"), dict) else None
    if isinstance(seeds, list) and seeds:
        settings["seed"] = seeds[0]
    settings.update(flatten(_table(doc, "smoke", where)))
    return settings


def parse_grid(doc: dict, path: Path | None = None, overrides: dict[str, Any] | None = None,
               smoke: bool = False) -> Grid:
    where = f"grid {path}" if path else "grid"
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise UserError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(sorted(TOP_KEYS))}")
    name = doc.get("name") or (path.stem if path else "grid")
    base = flatten(_table(doc, "base", where))  # a list is a list-typed value; sweeps go under [axes]
    axes: list[list[dict]] = []
    for key, values in flatten(_table(doc, "axes", where)).items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: axes.{key} must be a non-empty list of values, got {values!r}")
        axes.append([{key: v} for v in values])
    for i, group in enumerate(_tables(doc, "zip", where)):
        flat = flatten(group)
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in flat.items()}
        if not flat or -1 in lengths.values() or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise UserError(f"{where}: zip #{i + 1} must map keys to non-empty lists of equal length, got {lengths}")
        axes.append([dict(zip(flat, combo)) for combo in zip(*flat.values())])
    seen: set[str] = set()
    for axis in axes:
        for key in axis[0]:
            if key in seen:
                raise UserError(f"{where}: key {key!r} is swept twice (in [axes] or [[zip]])")
            seen.add(key)
    excludes = [flatten(e) for e in _tables(doc, "exclude", where)]

    if smoke:
        overrides = {**smoke_overrides(doc, where), **(overrides or {})}
    for key, value in (overrides or {}).items():
        _check_key(key, f"--set {key}")
        # An override fixes the key for every run: it replaces a swept axis too.
        axes = [[{k: v for k, v in a.items() if k != key} for a in axis] for axis in axes]
        axes = [axis for axis in axes if axis[0]]
        base[key] = value

    tables = [_table_spec(t, where, path) for t in _tables(doc, "table", where)]
    grid = Grid(str(name), path, str(doc.get("description", "")), base, axes, excludes, tables)
    for key in list(base) + grid.axis_keys + [k for e in excludes for k in e]:
        _check_key(key, f"{where}: key {key!r}")
    return grid


def _table(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}]), got {value!r}")
    return value


def _tables(doc: dict, key: str, where: str) -> list[dict]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UserError(f"{where}: {key} must be an array of tables ([[{key}]])")
    return value


_PROTOCOL_KEYS = {p.name for p in PROTOCOL_PARAMS}


def _check_key(key: str, label: str) -> None:
    """Only structural checks here; values are validated when runs are resolved."""
    parts = key.split(".")
    if len(parts) == 1 and (key in _PROTOCOL_KEYS or key in PLUGIN_KEYS):
        return
    if len(parts) == 3 and parts[0] in PLUGIN_KEYS.values():
        return
    if len(parts) == 2 and parts[0] in SUBTABLES:
        return
    close = difflib.get_close_matches(key, sorted(_PROTOCOL_KEYS | set(PLUGIN_KEYS)), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"{label}: unknown setting {key!r}{hint}. Settings are the protocol keys "
                    f"({', '.join(sorted(_PROTOCOL_KEYS))}), method/backbone/dataset, and plugin "
                    f"parameters as methods.NAME.KEY, backbones.NAME.KEY or datasets.NAME.KEY")


def _table_spec(raw: dict, where: str, path: Path | None) -> TableSpec:
    unknown = set(raw) - TABLE_KEYS
    if unknown:
        raise UserError(f"{where}: table keys {', '.join(sorted(unknown))} unknown; allowed: {', '.join(sorted(TABLE_KEYS))}")
    for key in ("name", "rows", "columns"):
        if not isinstance(raw.get(key), str):
            raise UserError(f"{where}: every [[table]] needs a string {key!r}")
    if "metrics" in raw or raw.get("columns") == METRIC_COLUMNS:
        metrics = raw.get("metrics")
        if (raw.get("columns") != METRIC_COLUMNS or not isinstance(metrics, list) or not metrics
                or not all(isinstance(m, str) and m for m in metrics)):
            raise UserError(f"{where}: table {raw.get('name')!r}: metrics as columns need columns = "
                            f"\"{METRIC_COLUMNS}\" and metrics = a list of result columns, e.g. "
                            f"[\"test_recall@1\", \"test_recall@2\"]")
        raw = {**raw, "metric": raw.get("metric", metrics[0])}
    spec = TableSpec(**{k: v for k, v in raw.items() if k != "reference"},
                     reference=(path.parent if path else Path.cwd()) / raw["reference"] if raw.get("reference") else None)
    # the metric is checked against the runs' result columns when the grid is prepared
    if not isinstance(spec.metric, str) or not spec.metric:
        raise UserError(f"{where}: table {spec.name!r}: metric must be a result column name, e.g. test_error")
    if spec.coverage and (set(spec.coverage) != {"source_only", "target_only"}
                          or not all(isinstance(v, dict) and v for v in spec.coverage.values())):
        raise UserError(f"{where}: table {spec.name!r}: coverage must be {{ source_only = {{...}}, target_only = "
                        f"{{...}} }}, each a non-empty filter of settings (like where)")
    names = spec.row_names
    if (not isinstance(names, dict) or not all(isinstance(v, str) and v for v in names.values())
            or len(set(names.values())) < len(names)):
        raise UserError(f"{where}: table {spec.name!r}: row_names must map row values to distinct, non-empty printed "
                        f"names, e.g. row_names = {{ \"TAC-CCL\" = \"+TAC\" }}")
    if spec.statistic not in ("median", "mean", "best"):
        raise UserError(f"{where}: table {spec.name!r}: statistic must be median, mean or best, got {spec.statistic!r}")
    if spec.spread not in ("std", "none"):
        raise UserError(f"{where}: table {spec.name!r}: spread must be std or none, got {spec.spread!r}")
    try:
        format(1.0, spec.format)
    except (ValueError, TypeError):
        raise UserError(f"{where}: table {spec.name!r}: format {spec.format!r} is not a Python number format") from None
    return spec


# ------------------------------------------------------------------------------ expansion
def expand(grid: Grid, registry) -> list[Run]:
    """All runs of the grid, resolved (defaults filled, values validated) and hashed, in axis
    order. Raises UserError on the first invalid run, before anything is trained."""
    runs, ids = [], set()
    for flat in _combinations(grid):
        if _excluded(flat, grid.excludes):  # before resolving: an excluded combination may be invalid
            continue
        config = resolve(flat, registry)
        if _excluded(flatten(config), grid.excludes):  # a key left at its default matches too
            continue
        run_id = run_id_of(identity(config, registry))
        if run_id in ids:
            continue  # two axis combinations that resolve to the same run (e.g. via zip)
        ids.add(run_id)
        runs.append(Run(run_id, config))
    return runs


def _combinations(grid: Grid):
    """The flat settings of every axis combination, in ``itertools.product`` order, except
    combinations that differ only in a plugin's knob the run does not use: an axis whose keys
    all belong to plugins other than the run's (``methods.vat.eps`` in a pi_model run) keeps its
    first value only. So ``[axes]`` may sweep each method's own knob beside a ``method`` axis
    without multiplying the combinations (the runs are the same: such knobs are not part of a
    run's configuration)."""
    excluded_keys = {k for e in grid.excludes for k in e}
    sections = {section: key for key, section in PLUGIN_KEYS.items()}

    def owners(axis: list[dict]) -> set[tuple[str, str]] | None:
        keys = list(axis[0])
        parts = [k.split(".") for k in keys]
        if any(len(p) != 3 or p[0] not in sections or k in excluded_keys for p, k in zip(parts, keys)):
            return None
        return {(sections[p[0]], p[1]) for p in parts}

    owned = [owners(axis) for axis in grid.axes]
    order = [i for i, o in enumerate(owned) if o is None] + [i for i, o in enumerate(owned) if o is not None]
    found: list[tuple[tuple[int, ...], dict]] = []

    def walk(position: int, flat: dict, index: dict[int, int]) -> None:
        if position == len(order):
            found.append((tuple(index[i] for i in range(len(grid.axes))), flat))
            return
        i = order[position]
        used = {(key, flat.get(key)) for key in PLUGIN_KEYS} | {("dataset", flat.get("target"))}
        choices = grid.axes[i] if owned[i] is None or owned[i] & used else grid.axes[i][:1]
        for j, assignment in enumerate(choices):
            walk(position + 1, {**flat, **assignment}, {**index, i: j})

    walk(0, dict(grid.base), {})
    found.sort(key=lambda item: item[0])
    return [flat for _, flat in found]


def _same(a: Any, b: Any) -> bool:
    """Setting equality for [[exclude]]: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _excluded(settings: dict[str, Any], excludes: list[dict]) -> bool:
    return any(all(k in settings and _same(settings[k], v) for k, v in ex.items()) for ex in excludes)


def resolve(flat: dict[str, Any], registry) -> dict:
    """A fully resolved nested run configuration from flat settings."""
    tree = unflatten(flat)
    protocol_given = {k: v for k, v in tree.items() if k in _PROTOCOL_KEYS}
    config = validate(PROTOCOL_PARAMS, protocol_given, where="")
    _check_task_keys(config, registry)
    _check_ema_keys(config)
    for name, params in SUBTABLES.items():
        given = tree.get(name, {})
        if not isinstance(given, dict):
            raise UserError(f"{name} must be a table ([base.{name}]) of {', '.join(p.name for p in params)}")
        config[name] = validate(params, given, where=f"{name}.")
    for key, section in PLUGIN_KEYS.items():
        name = tree.get(key)
        if not isinstance(name, str):
            raise UserError(f"every run needs a {key} name (base.{key} = \"...\"), got {name!r}")
        given_sections = tree.get(section, {})
        for other, args in given_sections.items():
            _plugin_params(registry, key, other)  # every named plugin must exist
            validate(_plugin_params(registry, key, other), args, where=f"{section}.{other}.")
        used = [name] + ([config["target"]] if key == "dataset" and config["target"] else [])
        config[key] = name
        config[section] = {n: validate(_plugin_params(registry, key, n), given_sections.get(n, {}),
                                       where=f"{section}.{n}.") for n in used}
    if registry.method(config["method"]).needs_ema and not config["ema_decay"]:
        raise UserError(f"method {config['method']} needs a teacher: set ema_decay > 0 (the engine then keeps the "
                        "EMA of the weights and hands it to the loss as ctx.ema_model), e.g. ema_decay = 0.999 "
                        "with ema_decay_early = 0.99 for the ramp-up")
    method = registry.method(config["method"])
    if method.label_source == "given" and config["n_labeled"] == 0:
        raise UserError(f"method {config['method']} trains on the labeled samples the task gives, but n_labeled = 0 "
                        f"gives none; set n_labeled > 0, or use a method that labels images itself (label_source "
                        f"'own', e.g. k-means pseudo-labels) or needs no labels ('none')")
    return config


def _check_ema_keys(config: dict) -> None:
    """An early EMA decay only has an EMA to act on when ``ema_decay`` > 0."""
    if config["ema_decay_early"] and not config["ema_decay"]:
        raise UserError(f"ema_decay_early = {config['ema_decay_early']} needs an EMA: set ema_decay > 0 too "
                        "(e.g. ema_decay_early = 0.99, ema_early_steps = 40000, ema_decay = 0.999)")


def _check_task_keys(config: dict, registry) -> None:
    """The run's task exists, and a key that only some task reads (``target``,
    ``train_classes``) is set only for such a task."""
    task = registry.task(config["task"])  # an unknown task fails here, with the installed ones
    by_key: dict[str, list[str]] = {}
    for name in registry.names("tasks"):
        for key in registry.task(name).keys:
            by_key.setdefault(key, []).append(name)
    defaults = {p.name: p.default for p in PROTOCOL_PARAMS}
    for key, tasks in by_key.items():
        if key in task.required and not config[key]:
            raise UserError(f"task {task.name} needs {key} (see `ssl-bench list tasks -v`), e.g. "
                            + ('target = "digits_inverted"' if key == "target" else f"{key} = ..."))
        if key not in task.keys and config[key] != defaults[key]:
            raise UserError(f"{key} is a setting of task {' / '.join(tasks)}, but this run's task is "
                            f"{task.name!r}; remove {key} or set task = \"{tasks[0]}\"")


def identity(config: dict, registry) -> dict:
    """The part of a resolved configuration that names the run (what :func:`run_id_of` hashes).

    A parameter declared with ``since`` (added after results existed) is left out while at its
    default, and a list enters as its comma-joined string, so adding a key, or writing
    ``widths = [16, 32]`` for the older ``"16,32"``, changes no existing run id."""
    def strip(values: dict, params: list[Param]) -> dict:
        by_name = {p.name: p for p in params}
        out = {}
        for key, value in values.items():
            p = by_name.get(key)
            if p is not None and not p.in_id_at_default and value == p.default:
                continue
            out[key] = id_value(value)
        return out

    out = strip({k: v for k, v in config.items() if k in _PROTOCOL_KEYS}, PROTOCOL_PARAMS)
    for name, params in SUBTABLES.items():
        rest = strip(config.get(name, {}), params)
        if rest:
            out[name] = rest
    for key, section in PLUGIN_KEYS.items():
        out[key] = config[key]
        out[section] = {n: strip(args, _plugin_params(registry, key, n)) for n, args in config[section].items()}
    return out


def _plugin_params(registry, key: str, name: str) -> list[Param]:
    if key == "method":
        return registry.method(name).params()
    if key == "backbone":
        return registry.backbone(name)[0].params
    return registry.dataset(name).params


def run_id_of(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def plugin_args(config: dict, key: str) -> dict:
    """The parameters of the run's method/backbone/dataset (``key``) from a resolved config."""
    return copy.deepcopy(config[PLUGIN_KEYS[key]][config[key]])
