package web_test

import (
	"encoding/base64"
	"strconv"
)

func basic(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }

func strconvF(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
