"""How fast this machine runs the device, measured in this run, and every time
limit of the boot tier derived from it.

The same commit booted to online in 45-54 s on one machine and in 116-224 s on
another of the same kind, and limits tuned on the first (a fixed 600 s for a
rollback of three failed boots) failed on the second. So the tier measures:
every boot records power-on to online, and a limit is a generous multiple
(FACTOR) of the work it covers, scaled by how much slower this run's boots
are than the boots the per-step figures were measured with (REFERENCE_BOOT).
The slowest boot so far counts: the other tiers run beside this one, and the
machine may be busier later in the run than at its start. Before the first
boot is measured, the slowest machine seen (SLOWEST_SEEN) is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# power-on to online (s) in the run whose per-step figures the tests name
REFERENCE_BOOT = 50.0
# the slowest ratio seen on a machine of this kind (224 s, loaded): for the first boot
SLOWEST_SEEN = 4.5
# headroom over the expected time: a limit is for a step that will not end
FACTOR = 3.0


@dataclass
class Pace:
    """Boot times of this run, and limits in proportion to them."""

    boots: list[tuple[str, float]] = field(default_factory=list)

    def record(self, what: str, seconds: float) -> None:
        self.boots.append((what, seconds))

    @property
    def ratio(self) -> float:
        """This run's slowest boot over REFERENCE_BOOT (never below 1)."""
        if not self.boots:
            return SLOWEST_SEEN
        return max(1.0, max(s for _, s in self.boots) / REFERENCE_BOOT)

    def limit(self, reference: float, fixed: float = 0.0) -> float:
        """Seconds to allow for work that took `reference` s in the reference run,
        plus `fixed` s that no machine's speed changes (a protocol's own timer)."""
        return FACTOR * (reference * self.ratio + fixed)

    def window(self, reference: float) -> int:
        """A device-side window (e.g. the confirmation window) that must cover
        work that took `reference` s in the reference run, at this run's speed."""
        return round(reference * self.ratio)


PACE = Pace()
