package plot

import (
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"
)

// Colors that read well on white and apart from each other.
var (
	Blue   = color.RGBA{31, 119, 180, 255}
	Orange = color.RGBA{255, 127, 14, 255}
	Gray   = color.RGBA{110, 110, 110, 255}
	Black  = color.RGBA{0, 0, 0, 255}
	Green  = color.RGBA{44, 160, 44, 255}
	Red    = color.RGBA{214, 39, 40, 255}
)

var (
	white = color.RGBA{255, 255, 255, 255}
	grid  = color.RGBA{225, 225, 225, 255}
	shade = color.RGBA{255, 232, 214, 255}
)

// A Series is one line of a panel: Y[i] is drawn at x = i × Chart.Step.
type Series struct {
	Name   string
	Color  color.RGBA
	Y      []float64
	Dashed bool
}

// A Panel is one plot of a Chart, its series sharing the chart's x axis.
type Panel struct {
	Title  string
	Series []Series
	// YMax is the top of the y axis; 0: the largest value, rounded up.
	YMax float64
	// LogMin, when positive, makes the y axis logarithmic from LogMin to
	// YMax (0: the largest value, rounded up to a power of ten); values
	// below LogMin are drawn at LogMin.
	LogMin float64
	// Shade, when Shade[1] > Shade[0], tints the x range [Shade[0],
	// Shade[1]] (to mark a stretch of time).
	Shade [2]float64
}

// A Chart is panels stacked one above the other over a common x axis.
type Chart struct {
	Title  string
	XLabel string
	// Step is the x distance between two points of a series.
	Step   float64
	Panels []Panel
	// Width and Height in pixels; 0: 1200 wide, 260 per panel.
	Width, Height int
}

const (
	scale      = 2  // text scale: 10×14 pixel capitals
	lineH      = 18 // height of a line of text
	marginL    = 80 // room for the y tick labels
	marginR    = 20
	titleH     = 40
	panelTop   = 30 // the panel's title and legend
	panelBelow = 30 // the x tick labels
)

// PNG draws c and encodes it to w.
func (c Chart) PNG(w io.Writer) error {
	img, err := c.Draw()
	if err != nil {
		return err
	}
	return png.Encode(w, img)
}

// Draw draws c.
func (c Chart) Draw() (*image.RGBA, error) {
	if len(c.Panels) == 0 {
		return nil, errors.New("plot: a chart with no panels")
	}
	if !(c.Step > 0) {
		return nil, errors.New("plot: Step must be positive")
	}
	width, height := c.Width, c.Height
	if width == 0 {
		width = 1200
	}
	if height == 0 {
		height = titleH + 260*len(c.Panels) + lineH
	}
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)
	drawText(img, (width-textWidth(c.Title, scale))/2, 12, c.Title, scale, Black)

	points := 0
	for _, p := range c.Panels {
		for _, s := range p.Series {
			points = max(points, len(s.Y))
		}
	}
	xmax := float64(max(points-1, 1)) * c.Step
	panelH := (height - titleH - lineH) / len(c.Panels)
	for i, p := range c.Panels {
		top := titleH + i*panelH
		area := image.Rect(marginL, top+panelTop, width-marginR, top+panelH-panelBelow)
		p.draw(img, area, c.Step, xmax)
	}
	drawText(img, (width-textWidth(c.XLabel, scale))/2, height-lineH, c.XLabel, scale, Black)
	return img, nil
}

func (p Panel) draw(img *image.RGBA, area image.Rectangle, step, xmax float64) {
	ymax := p.YMax
	if ymax <= 0 {
		for _, s := range p.Series {
			for _, y := range s.Y {
				if !math.IsNaN(y) {
					ymax = max(ymax, y)
				}
			}
		}
		if p.LogMin > 0 {
			ymax = math.Pow(10, math.Ceil(math.Log10(max(ymax, p.LogMin*10))))
		} else {
			ymax = niceCeil(ymax)
		}
	}
	px := func(x float64) int { return area.Min.X + int(math.Round(x/xmax*float64(area.Dx()))) }
	py := func(y float64) int {
		f := min(y, ymax) / ymax
		if p.LogMin > 0 {
			f = math.Log(max(y, p.LogMin)/p.LogMin) / math.Log(ymax/p.LogMin)
		}
		return area.Max.Y - int(math.Round(min(f, 1)*float64(area.Dy())))
	}
	yticks := make([]float64, 0, 6)
	if p.LogMin > 0 {
		for y := p.LogMin; y <= ymax*(1+1e-9); y *= 10 {
			yticks = append(yticks, y)
		}
	} else {
		for k := 0; k <= 5; k++ {
			yticks = append(yticks, ymax*float64(k)/5)
		}
	}

	if p.Shade[1] > p.Shade[0] {
		fill(img, image.Rect(px(p.Shade[0]), area.Min.Y, px(min(p.Shade[1], xmax)), area.Max.Y), shade)
	}
	// Grid and tick labels: 5 steps up (or powers of ten), about 10 across.
	for _, y := range yticks {
		fill(img, image.Rect(area.Min.X, py(y), area.Max.X, py(y)+1), grid)
		label := format(y)
		drawText(img, area.Min.X-8-textWidth(label, scale), py(y)-7, label, scale, Gray)
	}
	xstep := niceCeil(xmax / 10)
	for x := 0.0; x <= xmax+xstep/1e6; x += xstep {
		fill(img, image.Rect(px(x), area.Min.Y, px(x)+1, area.Max.Y), grid)
		label := format(x)
		drawText(img, px(x)-textWidth(label, scale)/2, area.Max.Y+6, label, scale, Gray)
	}
	fill(img, image.Rect(area.Min.X, area.Min.Y, area.Min.X+1, area.Max.Y+1), Black)
	fill(img, image.Rect(area.Min.X, area.Max.Y, area.Max.X, area.Max.Y+1), Black)

	for _, s := range p.Series {
		for i := 1; i < len(s.Y); i++ {
			if math.IsNaN(s.Y[i-1]) || math.IsNaN(s.Y[i]) {
				continue
			}
			if s.Dashed && (i/4)%2 == 1 {
				continue
			}
			line(img, px(float64(i-1)*step), py(s.Y[i-1]), px(float64(i)*step), py(s.Y[i]), s.Color)
		}
	}

	// The title, then the legend, above the plot.
	x := area.Min.X
	drawText(img, x, area.Min.Y-lineH-4, p.Title, scale, Black)
	x += textWidth(p.Title, scale) + 30
	for _, s := range p.Series {
		y := area.Min.Y - lineH + 3
		for k := 0; k < 24; k++ {
			if !s.Dashed || (k/6)%2 == 0 {
				fill(img, image.Rect(x+k, y, x+k+1, y+3), s.Color)
			}
		}
		drawText(img, x+30, area.Min.Y-lineH-4, s.Name, scale, s.Color)
		x += 30 + textWidth(s.Name, scale) + 24
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p*(1+1e-9) {
			return m * p
		}
	}
	return 10 * p
}

func format(v float64) string {
	if v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

// line draws a line two pixels thick from (x0, y0) to (x1, y1)
// (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		img.SetRGBA(x0+1, y0, c)
		img.SetRGBA(x0, y0+1, c)
		img.SetRGBA(x0+1, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
