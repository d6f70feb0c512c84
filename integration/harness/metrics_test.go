package harness

import "testing"

func TestMetricSum(t *testing.T) {
	const text = `# HELP x_total things
# TYPE x_total counter
x_total{cloud="aws",code="200"} 3
x_total{cloud="aws",code="503"} 2 1700000000000
x_total{cloud="gcp",code="200",note="a\"b\""} 5
x_total 7
x_total_other{cloud="aws"} 100
y 1e3
`
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"x_total", nil, 17},
		{"x_total", map[string]string{"cloud": "aws"}, 5},
		{"x_total", map[string]string{"code": "200"}, 8},
		{"x_total", map[string]string{"note": `a"b"`}, 5},
		{"x_total", map[string]string{"cloud": ""}, 7},
		{"y", nil, 1000},
		{"absent", nil, 0},
	} {
		if got := MetricSum(text, c.name, c.labels); got != c.want {
			t.Errorf("MetricSum(%s, %v) = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
