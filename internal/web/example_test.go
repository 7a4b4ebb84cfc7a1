package web_test

import (
	"fmt"
	"io"
	"net/http/httptest"

	"github.com/ferrymigrate/ferry/internal/web"
)

// A server without a database or Redis still serves its health check and
// static assets; in ferry it is started by `ferry web` with both.
func ExampleNew() {
	srv, err := web.New(web.Config{Listen: "127.0.0.1:0", Auth: web.Auth{Token: "s3cret"}})
	if err != nil {
		panic(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()

	resp, _ := ts.Client().Get(ts.URL + "/healthz")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))

	resp, _ = ts.Client().Get(ts.URL + "/background_migrations")
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("WWW-Authenticate"))

	// Listening beyond loopback without credentials is refused.
	_, err = web.New(web.Config{Listen: "0.0.0.0:7373"})
	fmt.Println(err != nil)
	// Output:
	// ok
	// 401 Basic realm="ferry", charset="UTF-8"
	// true
}
