package chaos

import (
	"context"
	"fmt"
	"strings"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// proxies are the in-process toxiproxy instances between the service and
// Postgres, Redis and NATS.
type proxies struct {
	server *toxiproxy.ApiServer
	byName map[string]*toxiproxy.Proxy
}

func newProxies() *proxies {
	return &proxies{
		server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		byName: map[string]*toxiproxy.Proxy{},
	}
}

// add starts a proxy to upstream on a free loopback port and returns its
// address.
func (p *proxies) add(name, upstream string) (string, error) {
	px := toxiproxy.NewProxy(p.server, name, "127.0.0.1:0", upstream)
	if err := px.Start(); err != nil {
		return "", fmt.Errorf("start proxy %s: %w", name, err)
	}
	p.byName[name] = px
	return px.Listen, nil
}

// cut closes the listener and every connection; heal listens again on the
// same address.
func (p *proxies) cut(name string) { p.byName[name].Stop() }

func (p *proxies) heal(name string) error {
	px := p.byName[name]
	if px.Enabled {
		return nil
	}
	return px.Start()
}

// toxic adds a toxic, e.g. toxic("redis", "latency", `{"latency":200,"jitter":50}`).
func (p *proxies) toxic(name, typ, attrs string) error {
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":"downstream","toxicity":1,"attributes":%s}`, typ, typ, attrs)
	_, err := p.byName[name].Toxics.AddToxicJson(strings.NewReader(js))
	return err
}

func (p *proxies) removeToxic(name, typ string) error {
	return p.byName[name].Toxics.RemoveToxic(context.Background(), typ)
}

func (p *proxies) close() {
	for _, px := range p.byName {
		px.Stop()
	}
}
