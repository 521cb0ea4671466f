"""The brake on bulk mail: when, over the last N bulk deliveries, the bounce rate passes its
threshold (5 %) or the complaint rate passes 0.1 % (Gmail and Yahoo want under 0.3 %), the
mail.bulk and mailout tubes are paused (bulk sends and fan-out hold) while urgent and normal
mail go on. The store keeps the state, so every worker holds bulk mail even if beanstalkd
forgot the pause; ``beanmail resume`` lifts it and starts a fresh window.
"""

from __future__ import annotations

import time

import greenstalk

from producer.client import connect
from producer.envelope import MAILOUT_TUBE

from ..logs import get_logger
from ..settings import Settings
from ..store import Store

BULK_TUBE = "mail.bulk"
HELD_TUBES = (BULK_TUBE, MAILOUT_TUBE)
PAUSE_SECONDS = 30 * 86400  # beanstalkd pauses for a time; the store's state holds past it


class Brake:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._cached: tuple[float, str] = (0.0, "")
        self._paused_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.brake_window > 0

    def rates(self) -> dict[str, object]:
        engaged, reason, since = self.store.brake()
        sent, bounced, complained = self.store.bulk_feedback(self.settings.brake_window, since)
        return {"engaged": engaged, "reason": reason, "since": since, "window": self.settings.brake_window,
                "sent": sent, "bounced": bounced, "complained": complained,
                "bounce_rate": bounced / sent if sent else 0.0, "complaint_rate": complained / sent if sent else 0.0,
                "unjudged": self.unjudged()}

    def unjudged(self) -> str:
        """Why the rates mean nothing, if they do: no bounce or complaint can come back."""
        if self.settings.return_path or self.settings.relay_provider:
            return ""
        return ("no return path: bounces and complaints are not read back (set BEANMAIL_RETURN_PATH,"
                " or BEANMAIL_RELAY_PROVIDER with its webhooks)")

    def check(self) -> str | None:
        """Trip the brake if the window's rates pass a threshold; the reason when it is on."""
        if not self.enabled:
            return None
        s = self.settings
        engaged, reason, since = self.store.brake()
        if engaged:
            return reason
        sent, bounced, complained = self.store.bulk_feedback(s.brake_window, since)
        if sent < s.brake_min_sends:
            return None
        if bounced / sent > s.brake_bounce_rate:
            reason = (f"bounce rate {bounced}/{sent} = {bounced / sent:.1%} over the last {sent} bulk deliveries"
                      f" passes {s.brake_bounce_rate:.1%}")
        elif complained / sent > s.brake_complaint_rate:
            reason = (f"complaint rate {complained}/{sent} = {complained / sent:.2%} over the last {sent} bulk"
                      f" deliveries passes {s.brake_complaint_rate:.2%}")
        else:
            return None
        if self.store.set_brake(True, reason):
            get_logger().error("brake engaged: bulk mail and fan-out hold until `beanmail resume`", reason=reason)
        self.pause_tubes(PAUSE_SECONDS)
        self._cached = (0.0, "")
        return reason

    def held(self) -> str:
        """The reason bulk mail holds now, or "" (asked for every bulk message: cached briefly)."""
        if not self.enabled:
            return ""
        now = time.monotonic()
        if now - self._cached[0] > 2.0:
            engaged, reason, _ = self.store.brake()
            self._cached = (now, reason if engaged else "")
        if self._cached[1] and now - self._paused_at > 60:
            # beanstalkd forgets a pause with its tube (restarted, or nobody watched it): renew it
            self._paused_at = now
            self.pause_tubes(PAUSE_SECONDS)
        return self._cached[1]

    def resume(self) -> bool:
        """Lift the brake; False if it was not on. The window starts afresh from now."""
        changed = self.store.set_brake(False, "resumed by operator")
        self.pause_tubes(0)
        self._cached = (0.0, "")
        return changed

    def pause_tubes(self, seconds: int) -> None:
        """On every beanstalkd server of the fleet (a sharded producer puts bulk mail on each)."""
        for url in self.settings.beanstalk_urls:
            try:
                with connect(url, timeout=5, encoding=None) as client:
                    for tube in HELD_TUBES:
                        client.use(tube)  # a tube exists while it is used: pausing one nobody uses fails
                        try:
                            client.pause_tube(tube, seconds)
                        except greenstalk.NotFoundError:
                            pass
            except (OSError, greenstalk.Error) as exc:
                # the store's state still holds bulk mail in every worker; only the pause is missing
                get_logger().warning("brake: beanstalkd tubes not paused", beanstalk=url, error=str(exc),
                                     seconds=seconds)
