package web

import (
	"fmt"
	"html/template"
	"math"
	"strings"
	"time"
)

// renderChart draws three stacked panels (batch size, batch duration,
// throughput) over the same time axis as an inline SVG. Rendering on the
// server keeps the page JavaScript-free and the binary free of a charting
// library; 200 points are a few kilobytes.
func renderChart(pts []ChartPoint) template.HTML {
	if len(pts) == 0 {
		return template.HTML(`<p class="muted">No finished batches yet.</p>`)
	}
	const (
		width  = 860
		panelH = 110
		gap    = 34
		left   = 70
		right  = 16
		top    = 22
	)
	panels := []struct {
		title, unit, class string
		val                func(ChartPoint) float64
	}{
		{"Batch size", "rows", "s1", func(p ChartPoint) float64 { return float64(p.BatchSize) }},
		{"Batch duration", "s", "s2", func(p ChartPoint) float64 { return p.Duration }},
		{"Throughput", "rows/s", "s3", func(p ChartPoint) float64 { return p.RowsPerSec }},
	}
	height := top + len(panels)*(panelH+gap) + 8
	t0, t1 := pts[0].At, pts[len(pts)-1].At
	span := t1.Sub(t0).Seconds()
	x := func(i int, p ChartPoint) float64 {
		if span <= 0 {
			if len(pts) == 1 {
				return left + float64(width-left-right)/2
			}
			return left + float64(i)/float64(len(pts)-1)*float64(width-left-right)
		}
		return left + p.At.Sub(t0).Seconds()/span*float64(width-left-right)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" id="chart" viewBox="0 0 %d %d" width="100%%" role="img" aria-label="Batch size, duration and throughput of the last %d batches" xmlns="http://www.w3.org/2000/svg">`, width, height, len(pts))
	for pi, pn := range panels {
		y0 := top + pi*(panelH+gap)
		maxV := 0.0
		for _, p := range pts {
			maxV = math.Max(maxV, pn.val(p))
		}
		val := func(p ChartPoint) float64 { return math.Max(0, pn.val(p)) } // clock skew can make a duration negative
		if maxV <= 0 {
			maxV = 1
		}
		fmt.Fprintf(&b, `<text class="ct" x="%d" y="%d">%s (%s)</text>`, left, y0-6, pn.title, pn.unit)
		fmt.Fprintf(&b, `<rect class="cbg" x="%d" y="%d" width="%d" height="%d"/>`, left, y0, width-left-right, panelH)
		for _, f := range []float64{0, 0.5, 1} {
			yy := float64(y0) + float64(panelH)*(1-f)
			fmt.Fprintf(&b, `<line class="cg" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`, left, width-right, yy, yy)
			fmt.Fprintf(&b, `<text class="cl" x="%d" y="%.1f" text-anchor="end">%s</text>`, left-6, yy+4, axisLabel(maxV*f))
		}
		var poly strings.Builder
		for i, p := range pts {
			fmt.Fprintf(&poly, "%.1f,%.1f ", x(i, p), float64(y0)+float64(panelH)*(1-val(p)/maxV))
		}
		fmt.Fprintf(&b, `<polyline class="%s" points="%s"/>`, pn.class, strings.TrimSpace(poly.String()))
		if len(pts) <= 60 {
			for i, p := range pts {
				fmt.Fprintf(&b, `<circle class="%s" cx="%.1f" cy="%.1f" r="2.5"><title>%s: %s</title></circle>`, pn.class, x(i, p),
					float64(y0)+float64(panelH)*(1-val(p)/maxV), p.At.UTC().Format("15:04:05"), axisLabel(val(p)))
			}
		}
	}
	yb := height - 4
	fmt.Fprintf(&b, `<text class="cl" x="%d" y="%d">%s</text>`, left, yb, t0.UTC().Format("2006-01-02 15:04:05"))
	fmt.Fprintf(&b, `<text class="cl" x="%d" y="%d" text-anchor="end">%s UTC (%d batches)</text>`, width-right, yb, t1.UTC().Format(time.TimeOnly), len(pts))
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and fixed strings only
}

func axisLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.1f", v)
	case v == 0:
		return "0"
	}
	return fmt.Sprintf("%.2f", v)
}
