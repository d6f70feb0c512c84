// The plot command draws the benchmark's latency-against-offered-load chart
// as a PNG: one line per percentile, the agent solid and the floor dashed in
// the same colour, on a logarithmic latency axis.
//
// It is a module of its own so that the plotting library never enters the
// agent's go.mod or binary. Its input is the sweep JSON that bench/cmd/bench
// writes:
//
//	{"title": "...", "series": [{"name": "agent", "points": [
//	    {"offered_rate": 1000, "throughput": 998, "latency": {"p50_ns": 1, ...}}]}]}
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

type latency struct {
	P50  float64 `json:"p50_ns"`
	P90  float64 `json:"p90_ns"`
	P99  float64 `json:"p99_ns"`
	P999 float64 `json:"p999_ns"`
}

type point struct {
	Offered    float64 `json:"offered_rate"`
	Throughput float64 `json:"throughput"`
	Latency    latency `json:"latency"`
}

type series struct {
	Name   string  `json:"name"`
	Points []point `json:"points"`
}

type sweep struct {
	Title  string   `json:"title"`
	Series []series `json:"series"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func run() error {
	in := flag.String("in", "", "sweep JSON")
	out := flag.String("out", "latency.png", "PNG to write")
	flag.Parse()
	if *in == "" {
		return errors.New("-in is required")
	}
	b, err := os.ReadFile(*in)
	if err != nil {
		return fmt.Errorf("reading sweep: %w", err)
	}
	var s sweep
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("decoding sweep %s: %w", *in, err)
	}
	p, err := draw1(s)
	if err != nil {
		return err
	}
	if err := p.Save(10*vg.Inch, 6*vg.Inch, *out); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	return nil
}

var percentiles = []struct {
	name  string
	get   func(latency) float64
	color color.Color
}{
	{"p50", func(l latency) float64 { return l.P50 }, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
	{"p90", func(l latency) float64 { return l.P90 }, color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}},
	{"p99", func(l latency) float64 { return l.P99 }, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}},
	{"p99.9", func(l latency) float64 { return l.P999 }, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}},
}

func draw1(s sweep) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = s.Title
	p.Title.TextStyle.Font.Size = vg.Points(15)
	p.X.Label.Text = "offered load (requests/s)"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.X.Label.TextStyle.Font.Size = vg.Points(13)
	p.Y.Label.TextStyle.Font.Size = vg.Points(13)
	p.X.Tick.Label.Font.Size = vg.Points(11)
	p.Y.Tick.Label.Font.Size = vg.Points(11)
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = msTicks{}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(11)

	dashes := [][]vg.Length{nil, {vg.Points(7), vg.Points(4)}, {vg.Points(2), vg.Points(3)}}
	shapes := []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}}
	// The legend names colours (percentiles) and line styles (servers)
	// separately: six entries instead of eight, so it fits in the headroom.
	for _, pc := range percentiles {
		l, err := plotter.NewLine(plotter.XYs{})
		if err != nil {
			return nil, err
		}
		l.Color, l.Width = pc.color, vg.Points(3)
		p.Legend.Add(pc.name, l)
	}
	lo, hi := math.Inf(1), 0.0
	for si, ser := range s.Series {
		for _, pc := range percentiles {
			xy := make(plotter.XYs, 0, len(ser.Points))
			for _, pt := range ser.Points {
				v := pc.get(pt.Latency) / 1e6
				if v <= 0 || math.IsNaN(v) {
					continue
				}
				xy = append(xy, plotter.XY{X: pt.Offered, Y: v})
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
			if len(xy) == 0 {
				continue
			}
			line, pts, err := plotter.NewLinePoints(xy)
			if err != nil {
				return nil, fmt.Errorf("series %s %s: %w", ser.Name, pc.name, err)
			}
			line.Color = pc.color
			line.Width = vg.Points(2)
			line.Dashes = dashes[si%len(dashes)]
			pts.Color = pc.color
			pts.Shape = shapes[si%len(shapes)]
			pts.Radius = vg.Points(3.5)
			p.Add(line, pts)
		}
		l, g, err := plotter.NewLinePoints(plotter.XYs{})
		if err != nil {
			return nil, err
		}
		l.Width, l.Dashes = vg.Points(2), dashes[si%len(dashes)]
		g.Shape, g.Radius = shapes[si%len(shapes)], vg.Points(3.5)
		p.Legend.Add(ser.Name, l, g)
	}
	if hi > 0 {
		// Headroom above the highest line for the legend.
		p.Y.Min, p.Y.Max = lo/1.5, hi*5
	}
	p.X.Min = 0
	return p, nil
}

// msTicks labels a logarithmic millisecond axis at 1-2-5 steps, which reads
// better than powers of ten alone over the one or two decades a latency
// chart spans.
type msTicks struct{}

func (msTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	for dec := math.Floor(math.Log10(min)); math.Pow(10, dec) <= max*10; dec++ {
		base := math.Pow(10, dec)
		for _, m := range []float64{1, 2, 5} {
			v := m * base
			if v < min || v > max {
				continue
			}
			ticks = append(ticks, plot.Tick{Value: v, Label: trim(v)})
		}
	}
	return ticks
}

func trim(v float64) string {
	switch {
	case v >= 1:
		return fmt.Sprintf("%.0f", v)
	case v >= 0.1:
		return fmt.Sprintf("%.1f", v)
	case v >= 0.01:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
