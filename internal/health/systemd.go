package health

import (
	"context"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// Notify speaks systemd's notify protocol while ctx lives, when
// NOTIFY_SOCKET is set (Type=notify units): READY=1 once the process is
// ready, WATCHDOG=1 at half of WATCHDOG_USEC while it is alive (a stuck
// process stops pinging and systemd restarts it), and STOPPING=1 when ctx
// ends or a stop is requested. Without NOTIFY_SOCKET it returns at once.
func (p *Probes) Notify(ctx context.Context, log *zap.Logger) {
	watchdog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("WATCHDOG_USEC unusable; no watchdog pings", zap.Error(err))
	}
	every := time.Second
	if watchdog > 0 {
		every = min(every, watchdog/2)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	ready := false
	for !p.Runtime.Health().Stopping {
		if !ready && p.Ready(ctx) == nil {
			sent, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=running")
			if err != nil {
				log.Warn("systemd notify failed", zap.Error(err))
			}
			if !sent {
				return // not under systemd (no NOTIFY_SOCKET)
			}
			ready = true
		}
		if watchdog > 0 && p.Alive() == nil {
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			return
		case <-tick.C:
		}
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
}
