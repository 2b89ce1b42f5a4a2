"""The real agent takes update jobs from the real management service.

This host has no /etc/hwrevision (SWUpdate's hardware file), so the agent
refuses every job before downloading, with the reason code the management
service then shows. The job stays retained; the agent remembers the ids it
handled, so a restart (even `kill -9`) does not take or report it again.
The download, the SWUpdate hand-off and the reboot run in the boot tier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_artifacts import cli, make_swu

from testbed.hostagent import HostAgent
from testbed.pace import PACE
from testbed.stack import ServiceProcess, Stack, http_get, http_send, wait_until

DEVICE = "dev-upd-1"


def job_entry(management: ServiceProcess, job: str, device: str = DEVICE) -> dict[str, Any]:
    """The device's entry in the job at the management service (state, reason, ...)."""
    status, body = http_get(management, f"/jobs/{job}")
    assert status == 200, body
    (entry,) = [d for d in body["devices"] if d["device"] == device]
    return dict(entry)


def new_job(stack: Stack, management: ServiceProcess, swu: Path, device: str = DEVICE) -> str:
    """A job for `device` of the artifact `swu`, added through the operator's CLI."""
    art = json.loads(cli(stack, "artifact", "add", "--json", str(swu)).stdout)
    status, job = http_send(
        management, "POST", "/jobs", {"artifact": art["sha256"], "device": device}
    )
    assert status == 201, job
    return str(job["id"])


def test_agent_refuses_a_job_once_and_remembers_it(
    stack: Stack, management: ServiceProcess, tmp_path: Path
) -> None:
    agent = HostAgent(stack, DEVICE, tmp_path / "agent")
    agent.start()
    try:
        job = new_job(stack, management, make_swu(tmp_path / "a.swu", "2.0"))
        entry = wait_until(
            lambda: (e := job_entry(management, job))["state"] == "failed" and e,
            what="the agent's refusal",
        )
        assert str(entry["reason"]).startswith("no_hwrevision: "), entry
        handled = json.loads((agent.data_dir / "update" / "handled.json").read_text())
        assert handled["jobs"] == [job]
        # with how it ended, which the agent reports again if the job is offered again
        assert handled["outcomes"] == {job: ["failed", entry["reason"]]}, handled
        assert not (agent.data_dir / "update" / "job.json").exists()

        # the job ended: the service clears its retained document, so that a restarted
        # agent is not offered it again (were it offered, the agent would answer with its
        # final report again, which the service ignores: rollouts' test of a lost report)
        wait_until(
            lambda: f"cleared update job {job} for {DEVICE}" in management.log_file.read_text(),
            what="the retained job cleared",
        )
        agent.kill()
        agent.start()
        wait_until(
            lambda: "management session online" in agent.log_tail(200),
            PACE.steps_of("online"),
            "the agent online",
        )
        assert job_entry(management, job)["updated"] == entry["updated"]

        # a new job (the first one is final) is taken and refused in its turn
        second = new_job(stack, management, make_swu(tmp_path / "b.swu", "2.1"))
        wait_until(lambda: job_entry(management, second)["state"] == "failed", what="the refusal")
        handled = json.loads((agent.data_dir / "update" / "handled.json").read_text())
        assert handled["jobs"] == [job, second]
    finally:
        agent.close()
