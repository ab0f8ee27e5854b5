"""The StaticRoute reconcile: spec -> ConfigMap, then status and events.

A reconcile takes a key and works from the current state in the informer caches,
never from the event that caused it, so it can be repeated at any time with the same
result. It:

1. validates the spec with the router's own rules (an invalid spec leaves the last
   good ConfigMap in place and says on the status what to change);
2. writes the ConfigMap only when its bytes differ from what the spec renders to,
   with a controller owner reference (garbage collected with the StaticRoute) and the
   ``managed-by`` label; a ConfigMap of that name that is not ours is never modified
   or adopted (``ConfigMapConflict``);
3. only once the ConfigMap holds the current spec, deletes any other ConfigMap the
   StaticRoute owns (left behind by a change of ``configMapName``): the routers mount
   the old one until the new one is there, so a new name that is taken, refused or
   failing never leaves them without a file;
4. writes status through the status subresource only when it changed, with
   optimistic concurrency, retrying from fresh state on 409.

Updates are server-side apply (``fieldManager=router-controller``, forced, guarded by
the cached ``resourceVersion``), as controller-runtime users now write objects: the
patch names only what the operator owns -- the ``dynamic_config.json`` key, the
``managed-by`` label and its owner reference -- so a finalizer, annotation, label or
data key another tool adds survives every update (a PUT of the whole object drops
them), and the API server records that those three fields are ours, so a later
``kubectl apply --server-side`` of the same key by someone else is told it conflicts
with router-controller instead of silently fighting it. A JSON merge patch would
preserve the others' fields too, but records no ownership. Creates stay a plain POST,
which fails on an existing name: an apply would create-or-update, and a ConfigMap of
that name that is not ours must never be taken.

A ConfigMap someone marked ``immutable: true`` cannot take new data (the API server
answers 422) and is not refreshed in the Pods that mount it, even if re-created
(Kubernetes' ConfigMap docs): the operator neither loops on the 422 nor deletes the
file the routers mount, it says so (``ConfigMapImmutable``) and re-creates the
ConfigMap once the user deletes it.

A ConfigMap write that keeps failing is said on the status (``ConfigMapReady=False``
and ``Ready=False``) with a Warning event, and retried with backoff: reason
``Forbidden`` when RBAC refused the verb (naming it, so a missing permission heals
once granted), ``ApplyFailed`` with the API server's own message for everything else
(quota, an admission policy or webhook, validation). A 403 from a terminating
namespace is not a failure: the StaticRoute is going away with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic
import structlog

from router_controller import conditions as cond
from router_controller.api import (
    API_VERSION,
    CONFIG_KEY,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    STATICROUTES,
    Condition,
    RouterStatus,
    StaticRouteSpec,
    StaticRouteStatus,
    config_map_name,
    default_config_map_name,
)
from router_controller.clock import SYSTEM_CLOCK, Clock, format_time
from router_controller.events import EventRecorder
from router_controller.informer import Informer
from router_controller.kube import (
    CONFIGMAPS,
    ApiError,
    Conflict,
    Forbidden,
    Kube,
    NotFound,
    Object,
    TooManyRequests,
)
from router_controller.metrics import Metrics
from router_controller.reconcile import Key, Result
from router_controller.routerconfig import (
    InvalidSpecError,
    RenderedConfig,
    check_config_map_name,
    render,
)
from router_controller.routerstate import RouterReport

CONFLICT_RECHECK_SECONDS = 60.0
FIELD_MANAGER = "router-controller"
APPLY_PATCH = "application/apply-patch+yaml"
MAX_ERROR_MESSAGE = 4096  # of an API error copied into a condition or an Event

log = structlog.get_logger("reconciler")


class RouterHealth(Protocol):
    """The probe scheduler as the reconciler sees it."""

    def sync(
        self, route: Object, spec: StaticRouteSpec, expected: dict[str, Any] | None
    ) -> RouterReport | None: ...

    def forget(self, namespace: str, name: str) -> None: ...


OWNER_INDEX = "owner"  # ConfigMaps by their controller's uid
CONFIGMAP_INDEX = "configmap"  # StaticRoutes by "namespace/ConfigMap name" they write


def owner_uids(obj: Object) -> list[str]:
    """Indexer: the uid of the object's controller, if any."""
    ref = controller_of(obj)
    return [str(ref["uid"])] if ref and ref.get("uid") else []


def wanted_configmap(route: Object) -> list[str]:
    """Indexer: "namespace/name" of the ConfigMap a StaticRoute asks for."""
    meta = route["metadata"]
    spec = route.get("spec") or {}
    name = spec.get("configMapName") or default_config_map_name(meta["name"])
    return [f"{meta.get('namespace', '')}/{name}"]


def owned_by(obj: Object, uid: str) -> bool:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return True
    return False


def controller_of(obj: Object) -> dict[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


class StaticRouteReconciler:
    """Reconciles one StaticRoute key at a time (the controller guarantees exclusivity)."""

    def __init__(
        self,
        *,
        kube: Kube,
        routes: Informer,
        configmaps: Informer,
        recorder: EventRecorder,
        clock: Clock = SYSTEM_CLOCK,
        health: RouterHealth | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._kube = kube
        self._routes = routes
        self._configmaps = configmaps
        self._recorder = recorder
        self._clock = clock
        self._health = health
        self._metrics = metrics

    async def reconcile(self, key: Key) -> Result:
        namespace, name = key
        route = self._routes.get(namespace, name)
        if route is None:
            if self._health is not None:
                self._health.forget(namespace, name)
            if self._metrics is not None:
                self._metrics.forget_staticroute(namespace, name)
            return Result()
        if route["metadata"].get("deletionTimestamp"):
            return Result()
        try:
            return await self._reconcile(route)
        except Conflict as err:
            if err.already_exists:
                raise
            # Our cached copy was stale (usually: our own write is still on its way
            # back through the watch). Recompute from the fresher cache shortly.
            log.debug("conflict, requeueing", error=str(err))
            return Result(requeue=True)
        except Forbidden as err:
            if err.namespace_terminating:
                return Result()  # the namespace is going away, and the StaticRoute with it
            raise

    async def _reconcile(self, route: Object) -> Result:
        meta = route["metadata"]
        generation = meta.get("generation")
        try:
            spec = StaticRouteSpec.model_validate(route.get("spec") or {})
            rendered = render(spec, namespace=meta["namespace"])
            check_config_map_name(meta["name"], spec)
        except pydantic.ValidationError as err:
            return await self._invalid(route, _pydantic_message(err), generation)
        except InvalidSpecError as err:
            return await self._invalid(route, str(err), generation)

        cm_name = config_map_name(meta["name"], spec)
        try:
            outcome = await self._apply_configmap(route, cm_name, rendered)
            if outcome.problem is None:  # the new one holds the current spec
                await self._delete_stale(route, cm_name)
        except _WriteFailed as failed:
            await self._write_failed(route, failed, generation)
            raise failed.error from None  # retried with backoff; it may heal meanwhile

        previous = route.get("status") or {}
        before = cond.parse(previous.get("conditions"))
        now = format_time(self._clock.now())  # every timestamp this reconcile writes
        desired: list[Condition] = []
        ready = True
        reason, message = "Ready", f"ConfigMap {cm_name} holds the current spec"
        config_map_ref = previous.get("configMapRef")
        applied = previous.get("lastAppliedTime")
        if outcome.problem is not None:
            reason, message = outcome.problem
            desired.append(
                cond.condition(cond.CONFIG_MAP_READY, False, reason, message, generation)
            )
            ready = False
        else:
            desired.append(
                cond.condition(cond.CONFIG_MAP_READY, True, "ConfigMapApplied", message, generation)
            )
            config_map_ref = cm_name
            if outcome.changed or not applied:
                applied = now

        report = None
        if self._health is not None:
            expected = None if outcome.problem is not None else rendered.content
            # With the status as it is about to be written: its lastAppliedTime opens the
            # window after which a router that serves another file is "not applied".
            about_to_be = {**previous, "configMapRef": config_map_ref, "lastAppliedTime": applied}
            report = self._health.sync({**route, "status": about_to_be}, spec, expected)
        if report is not None:
            desired.extend(report.conditions)
            if ready and not report.ready:
                failing = [c for c in report.conditions if c.status != "True"]
                ready = False
                reason, message = failing[0].reason, failing[0].message
        desired.append(cond.condition(cond.READY, ready, reason, message, generation))

        status = StaticRouteStatus(
            config_map_ref=config_map_ref,
            last_applied_time=applied,
            routers=report.routers if report is not None else None,
        )
        events = _transition_events(before, desired)
        await self._write_status(route, status, before, desired, generation, now=now)
        for type_, event_reason, event_message in events:
            await self._recorder.record(route, type_, event_reason, event_message)
        if outcome.problem is not None and outcome.problem[0] == "ConfigMapConflict":
            # The foreign ConfigMap is not in our (label-selected) cache: look again later.
            return Result(requeue_after=CONFLICT_RECHECK_SECONDS)
        return Result()

    async def _invalid(self, route: Object, message: str, generation: int | None) -> Result:
        """Report a spec the router would reject; leave the last good ConfigMap alone."""
        text = f"invalid spec, ConfigMap left unchanged: {message}"
        desired = [
            cond.condition(cond.CONFIG_MAP_READY, False, "InvalidSpec", text, generation),
            cond.condition(cond.READY, False, "InvalidSpec", text, generation),
        ]
        previous = route.get("status") or {}
        before = cond.parse(previous.get("conditions"))
        status = StaticRouteStatus(
            config_map_ref=previous.get("configMapRef"),
            last_applied_time=previous.get("lastAppliedTime"),
        )
        await self._write_status(route, status, before, desired, generation)
        old = cond.find(before, cond.CONFIG_MAP_READY)
        if cond.flipped(before, desired, cond.CONFIG_MAP_READY) or (
            old is None or old.message != text
        ):
            await self._recorder.record(route, "Warning", "InvalidSpec", message)
        return Result()

    async def _write_failed(
        self, route: Object, failed: _WriteFailed, generation: int | None
    ) -> None:
        """Say on the status which ConfigMap write keeps failing, and the API's reason."""
        err = failed.error
        api_message = err.message[:MAX_ERROR_MESSAGE] or str(err)
        if isinstance(err, Forbidden) and err.rbac_denied:
            reason = "Forbidden"
            text = (
                f"the operator is not allowed to {failed.action}: {api_message}. "
                "Grant its service account the rules of config/rbac/role.yaml"
            )
        else:
            reason = "ApplyFailed"
            text = f"could not {failed.action} (HTTP {err.status}): {api_message}"
        previous = route.get("status") or {}
        before = cond.parse(previous.get("conditions"))
        others = [c for c in before if c.type not in (cond.CONFIG_MAP_READY, cond.READY)]
        desired = [
            *others,
            cond.condition(cond.CONFIG_MAP_READY, False, reason, text, generation),
            cond.condition(cond.READY, False, reason, text, generation),
        ]
        status = StaticRouteStatus(
            config_map_ref=previous.get("configMapRef"),
            last_applied_time=previous.get("lastAppliedTime"),
            routers=_routers(previous.get("routers")),
        )
        try:
            await self._write_status(route, status, before, desired, generation)
        except ApiError as status_err:  # the original error is what matters
            log.warning("could not report the failed write", error=str(status_err))
            return
        old = cond.find(before, cond.CONFIG_MAP_READY)
        if cond.flipped(before, desired, cond.CONFIG_MAP_READY) or (
            old is None or old.message != text
        ):
            await self._recorder.record(route, "Warning", reason, text)

    # -- ConfigMap ---------------------------------------------------------------------

    async def _delete_stale(self, route: Object, keep: str) -> None:
        """Delete ConfigMaps this StaticRoute owns under another name (configMapName changed)."""
        meta = route["metadata"]
        for cm in self._configmaps.by_index(OWNER_INDEX, meta["uid"]):
            cm_meta = cm["metadata"]
            if cm_meta["name"] == keep or not owned_by(cm, meta["uid"]):
                continue
            path = CONFIGMAPS.path(meta["namespace"], cm_meta["name"])
            action = f"delete the previous ConfigMap {meta['namespace']}/{cm_meta['name']}"
            try:
                with _writing(action):
                    await self._kube.delete(
                        path,
                        {
                            "preconditions": {"uid": cm_meta["uid"]},
                            "propagationPolicy": "Background",
                        },
                    )
            except NotFound:
                continue
            except Conflict:  # replaced by somebody else meanwhile: not ours to delete
                continue
            await self._recorder.record(
                route,
                "Normal",
                "ConfigMapDeleted",
                f"deleted ConfigMap {cm_meta['name']}: spec.configMapName is now {keep}",
            )

    async def _apply_configmap(
        self, route: Object, name: str, rendered: RenderedConfig
    ) -> _Outcome:
        meta = route["metadata"]
        namespace = meta["namespace"]
        existing = self._configmaps.get(namespace, name)
        if existing is None:
            try:
                desired = self._desired_cm(route, name, rendered)
                with (
                    _writing(f"create ConfigMap {namespace}/{name}"),
                    self._configmaps.creating((namespace, name)),
                ):
                    created = await self._kube.create(CONFIGMAPS.path(namespace), desired)
                self._configmaps.written(created, over=None, expected=desired)
            except Conflict as err:
                if not err.already_exists:
                    raise
                with _writing(f"read ConfigMap {namespace}/{name}"):
                    existing = await self._kube.get(CONFIGMAPS.path(namespace, name))
            else:
                await self._recorder.record(
                    route, "Normal", "ConfigMapCreated", f"created ConfigMap {name}"
                )
                return _Outcome(changed=True)
        if not owned_by(existing, meta["uid"]):
            return _Outcome(
                problem=("ConfigMapConflict", _conflict_message(namespace, name, existing))
            )
        same_data = (existing.get("data") or {}).get(CONFIG_KEY) == rendered.data
        labels = existing["metadata"].get("labels") or {}
        if same_data and labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
            return _Outcome()
        if not same_data and existing.get("immutable"):
            return _Outcome(problem=("ConfigMapImmutable", _immutable_message(namespace, name)))
        body = self._desired_cm(route, name, rendered)
        # A precondition: never apply to a ConfigMap that changed since it was cached
        # (it may have become somebody else's); a 409 re-reconciles from fresh state.
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        with _writing(f"update ConfigMap {namespace}/{name}"):
            applied = await self._kube.request(
                "PATCH",
                CONFIGMAPS.path(namespace, name),
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=body,
                content_type=APPLY_PATCH,
            )
        self._configmaps.written(applied, over=existing["metadata"]["resourceVersion"])
        if not same_data:
            await self._recorder.record(
                route, "Normal", "ConfigMapUpdated", f"updated ConfigMap {name} to the current spec"
            )
        return _Outcome(changed=not same_data)

    def _desired_cm(self, route: Object, name: str, rendered: RenderedConfig) -> Object:
        meta = route["metadata"]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": KIND,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {CONFIG_KEY: rendered.data},
        }

    # -- status ------------------------------------------------------------------------

    async def _write_status(
        self,
        route: Object,
        status: StaticRouteStatus,
        before: list[Condition],
        desired: list[Condition],
        generation: int | None,
        *,
        now: str | None = None,
    ) -> None:
        """Patch status if it differs, guarded by the resourceVersion it was computed from.

        ``status`` is complete but for the conditions and ``observedGeneration``, which
        are filled in here (a condition that flips is stamped ``now``, by default the
        clock's); it is serialised once, and compared with the stored status.
        A 409 means it was computed from a stale copy: :class:`Conflict` propagates and
        the key is reconciled again from fresher state, never patched with stale values.
        """
        current = route.get("status") or {}
        stamp = now or format_time(self._clock.now())
        new = cond.wire_status(status, generation, cond.merge_wire(before, desired, stamp))
        if self._metrics is not None:  # also when unchanged: a restarted operator exports it
            self._metrics.staticroute_conditions(
                route["metadata"]["namespace"], route["metadata"]["name"], new["conditions"]
            )
        if _same_status(current, new):
            return
        meta = route["metadata"]
        body = {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": {**{k: None for k in current if k not in new}, **new},
        }
        written = await self._kube.merge_patch(
            STATICROUTES.path(meta["namespace"], meta["name"], "status"), body
        )
        self._routes.written(
            written, over=meta["resourceVersion"], expected={**route, "status": new}
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    changed: bool = False
    problem: tuple[str, str] | None = None  # (reason, message): the ConfigMap is not current


class _WriteFailed(Exception):
    """A ConfigMap call failed in a way the user should read on the StaticRoute."""

    def __init__(self, action: str, error: ApiError) -> None:
        super().__init__(f"could not {action}: {error}")
        self.action = action
        self.error = error


def _lasting(err: ApiError) -> bool:
    """Whether a failed ConfigMap call is worth reporting, not just retrying.

    A 409 or 404 means our cache was stale (re-reconciled from fresher state), a 429 is
    throttling the client already waited out, a terminating namespace takes the
    StaticRoute with it; anything else (RBAC, quota, admission, validation, a failing
    webhook) keeps failing until someone acts.
    """
    if isinstance(err, Forbidden):
        return not err.namespace_terminating
    return not isinstance(err, (Conflict, NotFound, TooManyRequests))


@contextlib.contextmanager
def _writing(action: str) -> Iterator[None]:
    """Turn a lasting API error of ``action`` into :class:`_WriteFailed`."""
    try:
        yield
    except ApiError as err:
        if _lasting(err):
            raise _WriteFailed(action, err) from err
        raise


_EVENTS = {
    # condition type -> (reason of the Event when it turns True, Event type when False)
    cond.CONFIG_MAP_READY: ("ConfigMapReady", "Warning"),
    cond.ROUTER_HEALTHY: ("RouterHealthy", "Warning"),
    cond.ROUTER_CONFIG_SYNCED: ("RouterConfigSynced", "Normal"),
}
# Reasons that need someone to act, whatever the condition's usual Event type: a
# router still serving another file after the sync window will not catch up alone.
_WARNING_REASONS = {"ConfigNotApplied"}


def _transition_events(
    before: list[Condition], after: list[Condition]
) -> list[tuple[str, str, str]]:
    """Events for conditions that flipped to True or False (not to Unknown)."""
    events = []
    for type_, (true_reason, false_type) in _EVENTS.items():
        new = cond.find(after, type_)
        if new is None or new.status == "Unknown" or not cond.flipped(before, after, type_):
            continue
        if new.status == "True":
            if type_ == cond.CONFIG_MAP_READY and cond.find(before, type_) is None:
                continue  # the ConfigMapCreated event already says it
            events.append(("Normal", true_reason, new.message))
        else:
            warning = new.reason in _WARNING_REASONS
            events.append(("Warning" if warning else false_type, new.reason, new.message))
    return events


def _routers(raw: Any) -> list[RouterStatus] | None:
    """A stored ``status.routers``, kept as it is while a write failure is reported."""
    if not isinstance(raw, list):
        return None
    kept = []
    for item in raw:
        with contextlib.suppress(pydantic.ValidationError):
            kept.append(RouterStatus.model_validate(item))
    return kept


def _same_status(current: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = set(current) | set(new)
    return all(current.get(k) == new.get(k) for k in keys)


def _conflict_message(namespace: str, name: str, existing: Object) -> str:
    owner = controller_of(existing)
    who = (
        f"it is controlled by {owner.get('kind')} {owner.get('name')}"
        if owner
        else "it was not created by this StaticRoute"
    )
    return (
        f"ConfigMap {namespace}/{name} already exists and {who}; it is left untouched. "
        "Set spec.configMapName to an unused name, "
        "or delete that ConfigMap if it is no longer needed"
    )


def _immutable_message(namespace: str, name: str) -> str:
    return (
        f"ConfigMap {namespace}/{name} is marked immutable, so it cannot take the current "
        "spec (and Pods that mount it would not see a change); it is left as it is. "
        "Delete it: the operator re-creates it, then restart the routers that mount it"
    )


def _pydantic_message(err: pydantic.ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{where}: {item['msg']}")
    return "; ".join(parts)
