package web

import (
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"strings"
	"time"
)

// pages holds one template set per page, each the layout plus the page.
type pages struct {
	sets map[string]*template.Template
}

var funcs = template.FuncMap{
	"pct": func(f float64) string {
		if f < 0 {
			return "Unknown"
		}
		return fmt.Sprintf("%.2f%%", f)
	},
	"barpct": func(f float64) string {
		if f < 0 {
			return "0"
		}
		return fmt.Sprintf("%.1f", f)
	},
	"rate": func(f float64) string {
		if f <= 0 {
			return "—"
		}
		return humanFloat(f)
	},
	"dur":  humanDuration,
	"secs": func(f float64) string { return fmt.Sprintf("%.1fs", f) },
	"jobdur": func(j *Job) string {
		if j.StartedAt == nil || j.FinishedAt == nil {
			return "—"
		}
		return fmt.Sprintf("%.2fs", j.Duration().Seconds())
	},
	"ts": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05")
		case *time.Time:
			if v == nil || v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05")
		}
		return "—"
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return humanDuration(time.Since(t)) + " ago"
	},
	"i64": func(p *int64) string {
		if p == nil {
			return "—"
		}
		return fmt.Sprint(*p)
	},
	"statusName":    StatusName,
	"jobStatusName": JobStatusName,
	"join":          strings.Join,
	"title":         func(s string) string { return strings.ReplaceAll(s, "_", " ") },
	"mb":            func(kb int64) string { return fmt.Sprintf("%.0f MB", float64(kb)/1024) },
	"add":           func(a, b int) int { return a + b },
	"dict2":         func(d *pageData, m *Migration) quickData { return quickData{D: d, M: m} },
}

// quickData passes the page and one migration to the "quick" actions template.
type quickData struct {
	D *pageData
	M *Migration
}

func newPages() (*pages, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	p := &pages{sets: map[string]*template.Template{}}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("web: parse %s: %w", n, err)
		}
		p.sets[base] = t
	}
	return p, nil
}

func (p *pages) execute(w io.Writer, page string, d *pageData) error {
	t, ok := p.sets[page]
	if !ok {
		return fmt.Errorf("no page %q", page)
	}
	return t.ExecuteTemplate(w, "layout.html", d)
}
