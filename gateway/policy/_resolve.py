"""Resolution of the file form: defaults merged, chains spliced, names cross-checked."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, SecretStr, ValidationError

from gateway.errors import PolicyError
from gateway.policy._embedding import known_dimensions, shortens_vectors
from gateway.policy._env import unavailable_reason
from gateway.policy._messages import combined, did_you_mean, translate
from gateway.policy._yaml import KeyPath, format_path, line_of
from gateway.policy.document import PolicyDocument, ProviderEntry, TaskEntry
from gateway.policy.models import (
    FACTORY_KEYWORDS,
    BreakerPolicy,
    ChainEntry,
    ProviderSpec,
    RetryPolicy,
    TaskSpec,
)

_Model = TypeVar("_Model", bound=BaseModel)


class Resolver:
    def __init__(
        self,
        document: PolicyDocument,
        lines: Mapping[KeyPath, int],
        source: str,
        unset_by_provider: Mapping[str, Sequence[str]],
        provider_types: Collection[str] | None,
        *,
        chat_only_types: Collection[str] = (),
    ) -> None:
        self.provider_types = provider_types
        self.chat_only_types = frozenset(chat_only_types)
        self.document = document
        self.lines = lines
        self.source = source
        self.unset_by_provider = unset_by_provider
        # Problems are gathered per provider, per task and per chain entry, so that one
        # error lists them all; each step raises what it gathered before the next runs (a
        # provider that failed would otherwise look undefined to every chain naming it).
        self._problems: list[PolicyError] = []
        self._cycle_members: set[str] = set()  # a cycle is reported once, not once per member

    def fail(self, message: str, path: KeyPath) -> PolicyError:
        return PolicyError(
            message, path=format_path(path), line=line_of(path, self.lines), source=self.source
        )

    def _raise_gathered(self) -> None:
        problems, self._problems = self._problems, []
        if problems:
            raise combined(problems, self.source)

    def providers(self) -> dict[str, ProviderSpec]:
        registered = sorted(self.provider_types or ())
        specs: dict[str, ProviderSpec] = {}
        for name, entry in self.document.providers.items():
            try:
                specs[name] = self._provider(name, entry, registered)
            except PolicyError as problem:
                self._problems.append(problem)
        self._raise_gathered()
        return specs

    def _provider(self, name: str, entry: ProviderEntry, registered: list[str]) -> ProviderSpec:
        defaults = self.document.defaults
        path: KeyPath = ("providers", name)
        if self.provider_types is not None and entry.type not in registered:
            raise self.fail(
                f"unknown provider type {entry.type!r}{did_you_mean(entry.type, registered)}"
                f"; registered types: {', '.join(registered)}",
                (*path, "type"),
            )
        for key in sorted(FACTORY_KEYWORDS & set(entry.options)):
            raise self.fail(
                f"options.{key} would clash with the provider's own setting: "
                f"move it out of options (write `{key}:` on the provider)",
                (*path, "options", key),
            )
        return ProviderSpec(
            name=name,
            type=entry.type,
            model=entry.model,
            base_url=entry.base_url or None,
            api_key=SecretStr(entry.api_key) if entry.api_key else None,
            weight=entry.weight,
            max_concurrency=entry.max_concurrency,
            max_input_tokens=entry.max_input_tokens,
            lacks=frozenset(entry.lacks),
            dimensions=entry.dimensions or known_dimensions(entry.model),
            timeout_s=entry.timeout_s if entry.timeout_s is not None else defaults.timeout_s,
            max_response_bytes=entry.max_response_bytes,
            retry=self._merge(RetryPolicy, defaults.retry, entry.retry, (*path, "retry")),
            breaker=self._merge(BreakerPolicy, defaults.breaker, entry.breaker, (*path, "breaker")),
            options=dict(entry.options),
            unavailable_reason=unavailable_reason(self.unset_by_provider.get(name)),
        )

    def _merge(
        self, model: type[_Model], default: _Model, overrides: BaseModel | None, path: KeyPath
    ) -> _Model:
        if overrides is None:
            return default
        # Keys the file sets, an explicit null included (`failure_rate: null` turns the rule
        # off); a mapping given for a nested setting fills in from the default's own.
        merged = default.model_dump()
        for key, value in overrides.model_dump(exclude_unset=True).items():
            if value is None and not _nullable(model, key):
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **value}
            merged[key] = value
        try:
            return model.model_validate(merged)
        except ValidationError as exc:
            raise translate(exc, self.lines, self.source, prefix=path) from None

    def tasks(self, providers: Mapping[str, ProviderSpec]) -> dict[str, TaskSpec]:
        specs: dict[str, TaskSpec] = {}
        for name, entry in self.document.tasks.items():
            if name in self._cycle_members:
                continue
            try:
                spec = self._task(name, entry, providers)
            except PolicyError as problem:
                self._problems.append(problem)
            else:
                if spec is not None:
                    specs[name] = spec
        self._check_redirects(specs)
        self._raise_gathered()
        return specs

    def _check_redirects(self, specs: Mapping[str, TaskSpec]) -> None:
        """Every redirect names a task, and no request can be redirected in a circle."""
        tasks = self.document.tasks
        for name, spec in specs.items():
            where = "tasks" if tasks[name].redirect is not None else "defaults"
            for kind, target in spec.redirect:
                path: KeyPath = (
                    (where, name, "redirect", kind.value, "task")
                    if where == "tasks"
                    else ("defaults", "redirect", kind.value, "task")
                )
                if target in tasks and tasks[target].kind != tasks[name].kind:
                    self._problems.append(
                        self.fail(
                            f"redirect to task {target!r}, of kind {tasks[target].kind}, from "
                            f"task {name!r}, of kind {tasks[name].kind}: a request can only go "
                            "to a task of its own kind",
                            path,
                        )
                    )
                if target not in tasks:
                    defined = list(tasks)
                    self._problems.append(
                        self.fail(
                            f"redirect to task {target!r}, which is not defined"
                            f"{did_you_mean(target, defined)}; defined tasks: "
                            f"{', '.join(defined)}",
                            path,
                        )
                    )
        graph = {name: sorted({t for _, t in spec.redirect}) for name, spec in specs.items()}
        cycle = _first_cycle(graph)
        if cycle is not None:
            self._problems.append(
                self.fail(
                    f"redirects lead back to where they started ({' -> '.join(cycle)}): a "
                    "request could go round forever; remove one redirect",
                    ("tasks", cycle[0], "redirect"),
                )
            )

    def _task(
        self, name: str, entry: TaskEntry, providers: Mapping[str, ProviderSpec]
    ) -> TaskSpec | None:
        """The task's spec; None when its chain entries had problems (gathered, not raised)."""
        gathered = len(self._problems)
        chain = self._chain(name, providers, trail=(), via=("tasks", name), entered_at=None)
        if len(self._problems) > gathered:
            return None
        self._reject_duplicates(name, chain)
        entries = tuple(link.entry for link in chain)
        if entry.kind == "embedding":
            entries = self._embedding_chain(name, entry, chain, providers)
        elif entry.mixed_dimensions:
            raise self.fail(
                f"mixed_dimensions applies to embedding tasks; task {name!r} is of kind "
                f"{entry.kind}: remove it, or add `kind: embedding`",
                ("tasks", name, "mixed_dimensions"),
            )
        if entry.strategy == "weighted" and all(
            providers[link.entry.provider].weight == 0 for link in chain
        ):
            raise self.fail(
                "strategy weighted needs at least one provider in the chain with weight > 0",
                ("tasks", name, "strategy"),
            )
        defaults = self.document.defaults
        redirect = entry.redirect if entry.redirect is not None else defaults.redirect
        extra: dict[str, Any] = {}
        if entry.explore is not None:
            extra["explore"] = entry.explore
        if entry.latency_half_life_s is not None:
            extra["latency_half_life_s"] = entry.latency_half_life_s
        return TaskSpec(
            name=name,
            chain=entries,
            kind=entry.kind,
            mixed_dimensions=entry.mixed_dimensions,
            strategy=entry.strategy,
            deadline_s=entry.deadline_s,
            first_token_timeout_s=entry.first_token_timeout_s,
            on_midstream_failure=entry.on_midstream_failure,
            stop_on=entry.stop_on if entry.stop_on is not None else defaults.stop_on,
            redirect=tuple(sorted((kind, to.task) for kind, to in redirect.items())),
            **extra,
        )

    def _embedding_chain(
        self,
        name: str,
        entry: TaskEntry,
        chain: Sequence[_Link],
        providers: Mapping[str, ProviderSpec],
    ) -> tuple[ChainEntry, ...]:
        """An embedding task's chain, each entry with the vector length it answers with.
        Refuses a provider whose type cannot embed, and (unless the task allows mixed
        dimensions) a chain whose lengths differ or are not all known."""
        entries: list[ChainEntry] = []
        for link in chain:
            spec = providers[link.entry.provider]
            if spec.type in self.chat_only_types:
                raise self.fail(
                    f"provider {spec.name!r} (type {spec.type}) cannot embed, and task {name!r} "
                    "is of kind embedding: use a provider of a type that embeds (openai, "
                    "azure_openai, ollama, litellm)",
                    link.entered_at,
                )
            asked = link.entry.params.get("dimensions")
            if asked is not None and (type(asked) is not int or asked < 1):
                raise self.fail(
                    f"params.dimensions is {asked!r}; use a whole number >= 1",
                    (*link.origin, "params", "dimensions"),
                )
            if asked is not None and not shortens_vectors(spec.model):
                raise self.fail(
                    f"params.dimensions={asked}: model {spec.model!r} of provider "
                    f"{spec.name!r} takes no dimensions parameter (OpenAI's text-embedding-3 "
                    "models do); declare its own length as the provider's `dimensions:` instead",
                    (*link.origin, "params", "dimensions"),
                )
            dimensions = asked or spec.dimensions
            entries.append(link.entry.model_copy(update={"dimensions": dimensions}))
        if entry.mixed_dimensions or len(entries) < 2:
            return tuple(entries)
        shown = ", ".join(
            f"{e.provider} ({e.dimensions if e.dimensions else 'undeclared'})" for e in entries
        )
        unknown = [e.provider for e in entries if e.dimensions is None]
        if unknown:
            raise self.fail(
                f"task {name!r} (kind embedding) chains providers whose vector lengths must "
                f"match, but {', '.join(repr(p) for p in unknown)} declare none: {shown}. "
                "Add `dimensions: N` to those providers, or `mixed_dimensions: true` to the task",
                ("tasks", name, "chain"),
            )
        if len({e.dimensions for e in entries}) > 1:
            raise self.fail(
                f"task {name!r} (kind embedding) would mix vector lengths: {shown}. Vectors of "
                "different lengths cannot share an index: chain providers of one length (or "
                "set params.dimensions on models that take it), or add "
                "`mixed_dimensions: true` to the task if its callers handle each length",
                ("tasks", name, "chain"),
            )
        return tuple(entries)

    def _chain(
        self,
        task: str,
        providers: Mapping[str, ProviderSpec],
        trail: tuple[str, ...],
        via: KeyPath,
        entered_at: KeyPath | None,
    ) -> list[_Link]:
        """The task's chain with `{task: other}` entries replaced by other's chain."""
        if task in trail:
            members = trail[trail.index(task) :]
            self._cycle_members.update(members)
            cycle = " -> ".join((*members, task))
            raise self.fail(
                f"tasks refer to each other in a cycle ({cycle}): remove one `task:` entry",
                via,
            )
        resolved: list[_Link] = []
        for index, item in enumerate(self.document.tasks[task].chain):
            path: KeyPath = ("tasks", task, "chain", index)
            if item.task is not None:
                if item.task not in self.document.tasks:
                    defined = list(self.document.tasks)
                    self._problems.append(
                        self.fail(
                            f"task {item.task!r} is not defined"
                            f"{did_you_mean(item.task, defined)}; "
                            f"defined tasks: {', '.join(defined)}",
                            (*path, "task"),
                        )
                    )
                    continue
                resolved += self._chain(
                    item.task, providers, (*trail, task), path, entered_at or path
                )
                continue
            provider = str(item.provider)
            if provider not in providers:
                defined = list(providers)
                self._problems.append(
                    self.fail(
                        f"provider {provider!r} is not defined{did_you_mean(provider, defined)}; "
                        f"defined providers: {', '.join(defined) or 'none'}. Add it under "
                        "`providers:` or fix the name",
                        path,
                    )
                )
                continue
            entry = ChainEntry(provider=provider, params=dict(item.params))
            resolved.append(_Link(entry, origin=path, entered_at=entered_at or path))
        return resolved

    def _reject_duplicates(self, task: str, chain: Sequence[_Link]) -> None:
        first_seen: dict[str, tuple[int, _Link]] = {}
        for position, link in enumerate(chain):
            provider = link.entry.provider
            if provider in first_seen:
                earlier_position, earlier = first_seen[provider]
                raise self.fail(
                    f"provider {provider!r} appears twice in the resolved chain of task {task!r}: "
                    f"at position {earlier_position} (from {format_path(earlier.origin)}) and "
                    f"position {position} (from {format_path(link.origin)}); keep one of them",
                    link.entered_at,
                )
            first_seen[provider] = (position, link)


def _nullable(model: type[BaseModel], key: str) -> bool:
    """Whether `key` of `model` takes None (as `failure_rate: null` does)."""
    field = model.model_fields.get(key)
    return field is not None and type(None) in get_args(field.annotation)


def _first_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of `graph` (task -> the tasks it redirects to) as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done or node not in graph:
            return None
        for target in graph[node]:
            found = visit(target, [*path, node])
            if found is not None:
                return found
        done.add(node)
        return None

    for start in graph:
        found = visit(start, [])
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class _Link:
    """One resolved chain entry, with where it was written and where it joined this chain."""

    entry: ChainEntry
    origin: KeyPath
    entered_at: KeyPath
