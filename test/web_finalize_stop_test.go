package test

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// A finalize started from the admin UI of a worker (`--web`) does not hold
// the worker's exit when the worker is stopped from Redis (the Sidekiq Web
// UI's Stop button): it is cancelled at the stop and the migration goes
// back to the workers. Before, the process waited for the finalize to end.
func TestWebFinalizeEndsWithWorkerStop(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	// About 30 s of copying: far longer than the stop below may take.
	slowCountingTable(ctx, t, pool, "webfin", 300000)
	_, ferry := bbmCLI(t, bin, redisURL, dbURL)
	_, id := queueCountingCopy(ctx, t, ferry, pool, "webfin", "--paused")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	const webToken = "stop-test-token"
	t.Setenv("FERRY_WEB_TOKEN", webToken) // the worker's environment: actions need credentials
	w := bbmStartWorker(t, bin, redisURL, dbURL, "--web", "--web-listen", addr, "--timeout", "10s", "--log-level", "info")
	base := "http://" + addr + "/background_migrations/" + strconv.FormatInt(id, 10)
	var resp *http.Response
	testenv.Eventually(t, 30*time.Second, "the admin UI answers", func() bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/finalize", strings.NewReader(url.Values{"confirm": {"yes"}}.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+webToken)
		resp, err = http.DefaultClient.Do(req)
		return err == nil
	})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		t.Fatalf("POST finalize: %d\n%s", resp.StatusCode, body)
	}
	testenv.Eventually(t, 30*time.Second, "the finalize copying", func() bool {
		var status int
		var copied int64
		_ = pool.QueryRow(ctx, `SELECT m.status, (SELECT count(*) FROM webfin WHERE v_big IS NOT NULL) FROM batched_background_migrations m WHERE m.id = $1`, id).Scan(&status, &copied)
		return status == 5 && copied > 0 // finalizing
	})
	// The Web UI's Stop: TERM through the process's signals list.
	rdb := redisFor(t, redisURL)
	identity := ""
	testenv.Eventually(t, 10*time.Second, "the worker's identity", func() bool {
		for _, p := range rdb.SMembers(ctx, "processes").Val() {
			if strings.Contains(p, ":"+strconv.Itoa(w.cmd.Process.Pid)+":") {
				identity = p
			}
		}
		return identity != ""
	})
	if err := rdb.LPush(ctx, identity+"-signals", "TERM").Err(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- w.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(25 * time.Second):
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		t.Fatalf("the worker, stopped from Redis with --timeout 10s, was still running 25 s later: the web finalize held it\n%s", w.out.String())
	}
	var status int
	if err := pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status == 5 || status == 3 || status == 6 {
		t.Errorf("after the stop the migration has status %d; want it handed back (not finalizing), not finished\n%s", status, w.out.String())
	}
}
