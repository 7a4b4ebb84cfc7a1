package test

import (
	"net"
	"sync"
	"testing"
	"time"
)

// tcpProxy stands between a client and a server (Redis) and plays the
// network faults the tests need:
//   - swallowThenCut: commands keep reaching the server (and run there) but
//     their replies never come back, then every connection is cut — what a
//     client sees when a partition or a failover happens just after a
//     command was sent;
//   - blackhole/heal: forwarding stops without closing anything; bytes are
//     held, as a network that drops packets holds them in TCP
//     retransmission, and delivered once it heals. New connections are
//     accepted but carry nothing until then.
type tcpProxy struct {
	ln       net.Listener
	upstream string
	closed   chan struct{}
	wg       sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	swallow bool          // drop server-to-client bytes
	open    chan struct{} // closed while forwarding
	refuse  bool          // close new connections at once: the server is down
}

func startProxy(t *testing.T, upstream string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, upstream: upstream, closed: make(chan struct{}), conns: map[net.Conn]struct{}{}, open: make(chan struct{})}
	close(p.open)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		close(p.closed)
		_ = ln.Close()
		p.cutAll()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); p.pipe(u, c, false) }() // commands
		go func() { defer p.wg.Done(); p.pipe(c, u, true) }()  // replies
	}
}

func (p *tcpProxy) pipe(dst, src net.Conn, replies bool) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			drop, open := replies && p.swallow, p.open
			p.mu.Unlock()
			select {
			case <-open:
			case <-p.closed:
				return
			}
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil { // EOF, or closed by cutAll
			return
		}
	}
}

func (p *tcpProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// swallowThenCut drops every reply for d, then closes all connections.
func (p *tcpProxy) swallowThenCut(d time.Duration) {
	p.mu.Lock()
	p.swallow = true
	p.mu.Unlock()
	time.Sleep(d) // the length of the simulated partition, not a wait for a condition
	p.cutAll()
	p.mu.Lock()
	p.swallow = false
	p.mu.Unlock()
}

// blackhole stops forwarding; heal resumes it.
func (p *tcpProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = make(chan struct{})
}

func (p *tcpProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// down plays a server that went away: every connection is cut and new
// ones are closed at once, until up.
func (p *tcpProxy) down() {
	p.mu.Lock()
	p.refuse = true
	p.mu.Unlock()
	p.cutAll()
}

func (p *tcpProxy) up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = false
}
