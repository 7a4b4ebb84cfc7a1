package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/internal/web"
)

// hostGet sends GET path to ts with the given Host header and credentials.
func hostGet(t *testing.T, ts *httptest.Server, host, path string, creds func(*http.Request)) (int, string) {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = host
	if creds != nil {
		creds(r)
	}
	resp, err := ts.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// A DNS-rebinding page names its own host: every route but /healthz
// refuses it with 421, with or without credentials; the loopback names
// work with and without a port.
func TestHostHeaderChecked(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	basic := func(r *http.Request) { r.SetBasicAuth(user, pass) }
	for _, path := range []string{"/background_migrations", "/metrics", "/busy", "/static/app.css", "/nope"} {
		for _, creds := range []func(*http.Request){nil, basic} {
			code, body := hostGet(t, b.ts, "evil.example", path, creds)
			if code != http.StatusMisdirectedRequest || !strings.Contains(body, `host "evil.example"`) || !strings.Contains(body, "web.allowed_hosts") {
				t.Errorf("GET %s as evil.example: %d %q; want 421 naming the host", path, code, body)
			}
		}
	}
	for _, host := range []string{"evil.example:7373", "127.0.0.1.evil.example", "localhost.evil.example", "[::1].evil.example"} {
		if code, _ := hostGet(t, b.ts, host, "/metrics", basic); code != http.StatusMisdirectedRequest {
			t.Errorf("Host %q: %d, want 421", host, code)
		}
	}
	for _, host := range []string{"localhost", "LOCALHOST:7373", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:7373", "localhost."} {
		if code, body := hostGet(t, b.ts, host, "/background_migrations", basic); code != http.StatusOK {
			t.Errorf("Host %q: %d %.200q, want 200", host, code, body)
		}
	}
	if code, _ := hostGet(t, b.ts, "evil.example", "/healthz", nil); code != http.StatusOK {
		t.Errorf("/healthz as evil.example: %d, want 200 (probes send the pod address)", code)
	}
}

// The listen address's own host, web.allowed_hosts and any address (no
// rebinding page sends one) are answered too.
func TestHostHeaderAllowed(t *testing.T) {
	t.Parallel()
	srv, err := web.New(web.Config{Redis: testenv.Redis(t), Listen: "10.1.2.3:7373", Auth: web.Auth{Token: token},
		AllowedHosts: []string{"Ferry.Internal", "192.0.2.7"}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
	for host, want := range map[string]int{
		"10.1.2.3:7373": 200, "ferry.internal": 200, "ferry.internal:443": 200, "192.0.2.7": 200, "localhost:7373": 200,
		"10.1.2.4": 200, "[2001:db8::1]:7373": 200, "internal": 421, "evil.example": 421, "10.1.2.3.nip.io": 421,
	} {
		if code, body := hostGet(t, ts, host, "/metrics", bearer); code != want {
			t.Errorf("Host %q: %d %.100q, want %d", host, code, body, want)
		}
	}
}

// Basic auth needs both the user and the password (compared in constant
// time); the token works as the password of any user.
func TestBasicAuthBothFields(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, c := range []struct {
		user, pass string
		want       int
	}{
		{user, pass, 200}, {"any", token, 200},
		{user, "wrong", 401}, {"admin2", pass, 401}, {"", pass, 401}, {user, "", 401}, {user, pass + "x", 401}, {"", "", 401},
	} {
		code, _ := hostGet(t, b.ts, "127.0.0.1", "/background_migrations", func(r *http.Request) { r.SetBasicAuth(c.user, c.pass) })
		if code != c.want {
			t.Errorf("basic %q:%q: %d, want %d", c.user, c.pass, code, c.want)
		}
	}
}
