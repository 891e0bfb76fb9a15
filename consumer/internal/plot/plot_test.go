package plot

import (
	"bytes"
	"image/png"
	"math"
	"testing"
)

func TestChartPNG(t *testing.T) {
	y := make([]float64, 200)
	for i := range y {
		y[i] = 10 + 5*math.Sin(float64(i)/10)
	}
	c := Chart{
		Title:  "a chart (test)",
		XLabel: "seconds",
		Step:   0.1,
		Panels: []Panel{
			{Title: "one", Series: []Series{{Name: "sine", Color: Blue, Y: y}, {Name: "flat", Color: Orange, Y: []float64{3, 3, 3}, Dashed: true}}, Shade: [2]float64{5, 10}},
			{Title: "two", Series: []Series{{Name: "gaps", Color: Green, Y: []float64{1, math.NaN(), 2}}}, YMax: 4},
			{Title: "log", Series: []Series{{Name: "rate", Color: Red, Y: []float64{0, 5, 50, 3000, 300}}}, LogMin: 10},
		},
	}
	var buf bytes.Buffer
	if err := c.PNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("png.Decode of the chart: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != titleH+3*260+lineH {
		t.Errorf("chart size = %v; want 1200×%d", b.Size(), titleH+3*260+lineH)
	}
	counts := map[[3]uint32]int{}
	for x := range img.Bounds().Dx() {
		for y := range img.Bounds().Dy() {
			r, g, b, _ := img.At(x, y).RGBA()
			counts[[3]uint32{r >> 8, g >> 8, b >> 8}]++
		}
	}
	for _, s := range []Series{{Name: "sine", Color: Blue}, {Name: "flat", Color: Orange}, {Name: "gaps", Color: Green}, {Name: "rate", Color: Red}, {Name: "shade", Color: shade}} {
		if counts[[3]uint32{uint32(s.Color.R), uint32(s.Color.G), uint32(s.Color.B)}] == 0 {
			t.Errorf("no pixel of %s's color %v", s.Name, s.Color)
		}
	}
}

func TestChartRefusesNoPanelsOrNoStep(t *testing.T) {
	if _, err := (Chart{Step: 1}).Draw(); err == nil {
		t.Error("Draw of a chart with no panels: nil error")
	}
	if _, err := (Chart{Panels: []Panel{{}}}).Draw(); err == nil {
		t.Error("Draw of a chart with Step 0: nil error")
	}
}

func TestNiceCeil(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{{0, 1}, {0.3, 0.5}, {1, 1}, {1.1, 2}, {3, 5}, {7, 10}, {32, 50}, {60, 100}, {4000, 5000}} {
		if got := niceCeil(tt.in); got != tt.want {
			t.Errorf("niceCeil(%v) = %v; want %v", tt.in, got, tt.want)
		}
	}
}
