"""sushy-emulator with a BIOS that behaves like a TDX server's, run as a subprocess by emulator.py.

Stock `--fake` has no BIOS at all, and the libvirt variant applies BIOS changes at once. Real
boards differ in three ways that the BIOS code under test has to handle, and this driver reproduces them:

* a PATCH to the Settings object stays pending until the next power-on (GET Settings shows it, GET
  Bios does not);
* each attribute can be hidden until the settings it requires are active (the TDX options appear
  only once TME-MT is on), refuse writes until a setting is at least staged, or be read-only while
  another holds (tests/fixtures/host/bios/<vendor>.rules.json); PATCHing a hidden, unknown or
  locked attribute is a 400, checked in the body's order as iDRAC does;
* the BIOS attribute registry is the vendor's (display names, read-only flags, allowed values).

Power transitions take a fixed, short delay instead of stock's random 1-11 s, so tests stay fast.
Every request (method, path; the body only for BIOS PATCHes and reset actions, never for anything
that could carry credentials) and every driver event is appended as a JSON line to the event log,
so tests can assert "no PATCH, no reset".

Usage: python driver.py --fake --config CONFIG.py -i 127.0.0.1 -p PORT
Extra config keys: TDXGPU_BIOS_REGISTRY (path to a registry JSON, or None for "no registry"),
TDXGPU_EVENT_LOG (path), TDXGPU_POWER_DELAY_S (float), TDXGPU_EXTRA_RESET_TYPES (list). Per fake system: bios, bios_hidden,
bios_requires, bios_requires_pending, bios_blocked_while, bios_version.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import flask
from sushy_tools import error
from sushy_tools.emulator import api_utils
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems import fakedriver

_LOG_LOCK = threading.Lock()


def record(event: dict[str, Any]) -> None:
    path = emulator.app.config.get("TDXGPU_EVENT_LOG")
    if not path:
        return
    line = json.dumps({"t": time.time(), **event}, sort_keys=True)
    with _LOG_LOCK, open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def load_registry() -> dict[str, Any] | None:
    path = emulator.app.config.get("TDXGPU_BIOS_REGISTRY")
    if not path:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def registry_entry(name: str) -> dict[str, Any] | None:
    registry = load_registry()
    if registry is None:
        return None
    for entry in registry.get("RegistryEntries", {}).get("Attributes", []):
        if entry.get("AttributeName") == name:
            return entry
    return None


class PendingBiosDriver(fakedriver.FakeDriver):
    """FakeDriver whose BIOS changes wait for a power-on, like a real board's."""

    def _power_delay(self) -> float:
        return float(self._config.get("TDXGPU_POWER_DELAY_S", 0.2))

    def get_bios(self, identity: str) -> dict[str, Any]:
        return dict(self._get(identity).get("bios") or {})

    def get_pending_bios(self, identity: str) -> dict[str, Any]:
        return dict(self._get(identity).get("bios_pending") or {})

    def get_versions(self, identity: str) -> dict[str, Any]:
        return {"BiosVersion": self._get(identity).get("bios_version", "1.0.0")}

    def set_bios(self, identity: str, attributes: dict[str, Any]) -> None:
        system = self._get(identity)
        visible = system.get("bios") or {}
        staged = {**visible, **(system.get("bios_pending") or {})}
        for name, value in attributes.items():  # in the body's order: an earlier item counts as staged
            _validate_write(name, value, visible)
            _check_unlocked(name, staged, system)
            staged[name] = value
        pending = dict(system.get("bios_pending") or {})
        pending.update(attributes)
        self._update(system, bios_pending=pending)
        record({"kind": "bios_pending", "attributes": attributes})

    def reset_bios(self, identity: str) -> None:
        system = self._get(identity)
        self._update(system, bios=dict(system.get("bios_defaults") or system.get("bios") or {}), bios_pending={})

    def set_power_state(self, identity: str, state: str) -> None:
        system = self._get(identity)
        if state in ("On", "ForceOn"):
            target = "On"
        elif state in ("ForceOff", "GracefulShutdown"):
            target = "Off"
        elif state in ("ForceRestart", "GracefulRestart", "PowerCycle"):
            # The board goes down at once and comes back after the delay.
            system["power_state"] = "Off"
            target = "On"
        else:
            raise error.NotSupportedError(f"Power state {state} is not supported")
        record({"kind": "power_request", "state": state})
        if system["power_state"] != target:
            self._update(system, pending_power={"power_state": target, "apply_time": time.time() + self._power_delay()})

    def _update_if_needed(self, system: dict[str, Any]) -> dict[str, Any]:
        pending = system.get("pending_power")
        if pending and time.time() >= pending["apply_time"]:
            changes: dict[str, Any] = {"power_state": pending["power_state"], "pending_power": None}
            if pending["power_state"] == "On":
                changes.update(_boot(system))
            self._update(system, **changes)
            record({"kind": "power", "state": pending["power_state"]})
        return system


def _validate_write(name: str, value: Any, visible: dict[str, Any]) -> None:
    if name not in visible:
        raise error.BadRequest(f"The property {name} is not in the list of valid properties for the resource.")
    entry = registry_entry(name)
    if entry is None:
        return
    if entry.get("ReadOnly"):
        raise error.BadRequest(f"The property {name} is a read only property and cannot be assigned a value.")
    allowed = [v.get("ValueName") for v in entry.get("Value") or []]
    if allowed and value not in allowed:
        raise error.BadRequest(f"The value {value!r} for the property {name} is not in the list of acceptable values.")


def _check_unlocked(name: str, staged: dict[str, Any], system: dict[str, Any]) -> None:
    """A write the board refuses although the attribute is listed: what it needs is not staged yet,
    or a setting that locks it holds (DMTF PropertyNotWritable wording, as iDRAC answers)."""
    needs = (system.get("bios_requires_pending") or {}).get(name) or {}
    locks = (system.get("bios_blocked_while") or {}).get(name) or {}
    if any(staged.get(k) != v for k, v in needs.items()) or any(staged.get(k) == v for k, v in locks.items()):
        raise error.BadRequest(f"The property {name} is a read only property and cannot be assigned a value.")


def _boot(system: dict[str, Any]) -> dict[str, Any]:
    """POST: pending settings become current, then the attributes whose requirements are now all
    active appear (one level per boot, as on the boards: a chain needs a reset per link).

    On a Dell-shaped BMC (TDXGPU_DELL_JOBS) pending BIOS values are applied only by a configuration
    job made for Bios/Settings (POST Managers/iDRAC.Embedded.1/Jobs): without one a reset boots the
    old values and the staged ones stay pending, as on iDRAC."""
    job = system.get("bios_job")
    if emulator.app.config.get("TDXGPU_DELL_JOBS") and (job is None or job["JobState"] != "Scheduled"):
        if system.get("bios_pending"):
            record({"kind": "bios_not_applied", "reason": "no configuration job"})
        return {}
    failure = emulator.app.config.get("TDXGPU_DELL_JOB_FAILS")
    if job is not None and failure:  # fault injection: the BIOS refuses the job during POST
        record({"kind": "job", "id": job["Id"], "state": "Failed"})
        return {"bios_job": {**job, "JobState": "Failed", "Message": failure, "MessageId": "SYS051"}}
    bios = dict(system.get("bios") or {})
    pending = dict(system.get("bios_pending") or {})
    bios.update(pending)
    hidden = dict(system.get("bios_hidden") or {})
    requires = system.get("bios_requires") or {}
    for name in [n for n in hidden if all(bios.get(k) == v for k, v in (requires.get(n) or {}).items())]:
        bios.setdefault(name, hidden.pop(name))
    if pending:
        record({"kind": "bios_applied", "attributes": pending})
    out: dict[str, Any] = {"bios": bios, "bios_pending": {}, "bios_hidden": hidden}
    if job is not None:
        done = {**job, "JobState": "Completed", "Message": "Job completed successfully.", "MessageId": "PR19"}
        out["bios_job"] = {**done, "PercentComplete": 100}
        record({"kind": "job", "id": job["Id"], "state": "Completed"})
    return out


@api_utils.ensure_instance_access
@api_utils.returns_json
def bios_settings(identity: str) -> Any:
    if flask.request.method == "GET":
        merged = emulator.app.systems.get_bios(identity)
        merged.update(emulator.app.systems.get_pending_bios(identity))
        return emulator.app.render_template(
            "bios_settings.json",
            identity=identity,
            bios_pending_attributes=json.dumps(merged, sort_keys=True, indent=6),
        )
    attributes = (flask.request.json or {}).get("Attributes")
    if not isinstance(attributes, dict) or not attributes:
        raise error.BadRequest("PATCH body needs a non-empty Attributes object")
    emulator.app.systems.set_bios(identity, attributes)
    return "", 204


DELL_JOBS = "/redfish/v1/Managers/iDRAC.Embedded.1/Jobs"


def _the_system() -> dict[str, Any]:
    driver = emulator.app.systems
    return driver._get(driver.systems[0])


@api_utils.returns_json
def dell_create_job() -> Any:
    """iDRAC's job service (DellJob: `TargetSettingsURI` required on create; the job's URI comes back
    in Location), for BIOS configuration jobs."""
    system = _the_system()
    target = str((flask.request.json or {}).get("TargetSettingsURI") or "")
    if not target.lower().endswith("/bios/settings"):  # sushy-tools names it BIOS, iDRAC Bios
        raise error.BadRequest(f"Unable to create a job for the TargetSettingsURI {target!r}.")
    job = system.get("bios_job")
    if job is not None and job["JobState"] == "Scheduled":
        raise error.BadRequest(
            "Pending configuration values are already committed, unable to perform another set operation."
        )
    if not system.get("bios_pending"):
        raise error.BadRequest("No pending data present to create a Configuration job.")
    jid = f"JID_{int(time.time() * 1000) % 10**12:012d}"
    job = {
        "Id": jid,
        "Name": "Configure: BIOS.Setup.1-1",
        "JobType": "BIOSConfiguration",
        "JobState": "Scheduled",
        "Message": "Task successfully scheduled.",
        "MessageId": "JCP001",
        "PercentComplete": 0,
        "TargetSettingsURI": None,
    }
    emulator.app.systems._update(system, bios_job=job)
    record({"kind": "job", "id": jid, "state": "Scheduled", "target": target})
    return "", 200, {"Location": f"{DELL_JOBS}/{jid}"}


@api_utils.returns_json
def dell_get_job(job_id: str) -> Any:
    system = _the_system()
    job = system.get("bios_job")
    if job is None or job["Id"] != job_id:
        raise error.NotFound(f"Job {job_id} not found")
    return json.dumps({"@odata.id": f"{DELL_JOBS}/{job_id}", "@odata.type": "#DellJob.v1_5_0.DellJob", **job})


@api_utils.returns_json
def bios_registry() -> Any:
    registry = load_registry()
    if registry is None:
        raise error.NotFound("No BIOS attribute registry on this BMC")
    return json.dumps(registry)


def log_request() -> None:
    request = flask.request
    event: dict[str, Any] = {"kind": "request", "method": request.method, "path": request.path}
    # Only bodies that cannot carry credentials (the session POST would).
    if request.method == "PATCH" and request.path.endswith("/BIOS/Settings"):
        event["body"] = request.get_json(silent=True)
    if request.method == "POST" and request.path.endswith("/Actions/ComputerSystem.Reset"):
        event["body"] = request.get_json(silent=True)
    record(event)


def add_reset_types(response: Any) -> Any:
    """Stock sushy-tools offers no PowerCycle; iDRAC does (dmc5179/redfish-configure-tdx-bios resets
    with ResetType PowerCycle). A board's extra reset types are added to the system's
    ResetType@Redfish.AllowableValues."""
    extra = emulator.app.config.get("TDXGPU_EXTRA_RESET_TYPES") or []
    request = flask.request
    if not extra or request.method != "GET" or "/Systems/" not in request.path or response.status_code != 200:
        return response
    try:
        body = json.loads(response.get_data())
        action = body["Actions"]["#ComputerSystem.Reset"]
    except (ValueError, KeyError, TypeError):
        return response
    action["ResetType@Redfish.AllowableValues"] = [*action["ResetType@Redfish.AllowableValues"], *extra]
    response.set_data(json.dumps(body))
    return response


def install() -> None:
    fakedriver.FakeDriver = PendingBiosDriver  # main.Application.systems looks the class up at call time
    emulator.app.view_functions["bios_settings"] = bios_settings
    emulator.app.view_functions["bios_registry"] = bios_registry
    emulator.app.add_url_rule(DELL_JOBS, "dell_create_job", dell_create_job, methods=["POST"])
    emulator.app.add_url_rule(f"{DELL_JOBS}/<job_id>", "dell_get_job", dell_get_job, methods=["GET"])
    emulator.app.before_request(log_request)
    emulator.app.after_request(add_reset_types)


def main() -> None:
    install()
    sys.argv = ["sushy-emulator", *sys.argv[1:]]
    emulator.main()


if __name__ == "__main__":
    main()
