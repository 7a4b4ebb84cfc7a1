package cli

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisLogger sends go-redis's internal messages (reconnects, pool dial
// failures) through zap, so logs stay JSON during a Redis outage.
type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	// Debug: the worker logs its own warning when a Redis call fails, and a
	// one-shot command prints one clear error; these are the details.
	l.log.Debug(fmt.Sprintf(format, v...))
}

// installRedisLogger is called once per process, after the logger is built.
// go-redis only offers a package-level logger, so this is the one place
// ferry sets it.
func installRedisLogger(log *zap.Logger) {
	redis.SetLogger(redisLogger{log: log.Named("redis")})
}
