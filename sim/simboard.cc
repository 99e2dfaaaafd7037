// The simulated board: a CXXRTL model of the board core behind a TCP socket.
//
// This harness is written by hand for ziphalp: no package provides a CXXRTL driver
// that bridges a byte stream to a socket. `ziphalp.sim.board` generates the design
// (`simboard_design.cc`, namespace `cxxrtl_design`, top module `top`) next to a copy
// of this file and compiles both as one translation unit, with SIMBOARD_FLAT defined
// when the design was flattened.
//
// The design has two byte streams (amaranth.lib.stream, 8-bit payload):
//   rx: bytes into the board   (p_rx____valid, p_rx____payload in; p_rx____ready out)
//   tx: bytes out of the board (p_tx____valid, p_tx____payload out; p_tx____ready in)
// and the `sync` clock domain (p_clk, and p_rst when the design has a reset).
//
// Protocol with the parent process: the harness listens on 127.0.0.1 (an ephemeral
// port unless --port is given), prints the port number and a newline on stdout,
// accepts one connection and then moves bytes between the socket and the design.
// UART bit timing is bypassed: at most one byte per clock cycle enters rx and at
// most one leaves tx; tx.ready is always high (output is buffered without limit,
// so a host that is slow to read never stalls the board). When the design is
// quiescent -- rx.ready high, no input byte pending and tx.valid low -- the harness
// sleeps in poll() instead of clocking an idle design.
// The design guarantees that rx.ready is high in that state only when nothing is in
// flight; as a safeguard the harness also waits until a clock edge changes no
// register or memory (the design has reached a fixed point), or until the ports have
// looked quiescent for --settle-cycles cycles (for designs with free-running
// counters, which never reach a fixed point; the default, 2**21, is larger than the
// link's inter-byte timeout of 0.02 s at 48 MHz, so that a stalled request times out
// as on a real board). With --idle-ms, a quiescent design that receives nothing for
// that long is clocked for --idle-cycles cycles anyway (so that time-outs inside the
// design can fire). When the peer closes the connection (or on SIGTERM/SIGINT) the
// harness prints one statistics line on stderr and exits with status 0:
//
//   simboard: cycles=N seconds=S busy_seconds=B cycles_per_second=R rx_bytes=I tx_bytes=O
//
// `seconds` is the wall time since the connection was accepted, `busy_seconds`
// leaves out the time spent asleep in poll(), and `cycles_per_second` is
// cycles / busy_seconds (the speed of the simulation itself).

#include "simboard_design.cc"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using design_t = cxxrtl_design::p_top;

// The design has `p_rst` only if its sync domain has a reset signal in use.
template<class T, class = void>
struct has_rst : std::false_type {};
template<class T>
struct has_rst<T, std::void_t<decltype(std::declval<T &>().p_rst)>> : std::true_type {};

template<class T>
void set_reset(T &top, bool value) {
	if constexpr (has_rst<T>::value)
		top.p_rst.template set<bool>(value);
}

// Evaluate and commit until the design settles (module::step() without the
// virtual calls). Returns true if any state (a register or memory) changed.
inline bool settle(design_t &top) {
	bool converged, changed = false;
	do {
		converged = top.design_t::eval();
		if (!top.design_t::commit())
			break;
		changed = true;
	} while (!converged);
	return changed;
}

// The clock's falling edge: evaluates the combinational logic with the new inputs
// and the state committed at the rising edge (the outputs read after a rising-edge
// settle() still reflect the state before the edge). No register changes on a
// falling edge, so when eval() converges in one pass -- the generated code says so
// statically, for a flattened design without combinational feedback -- the only
// effect of commit() would be to remember the clock level for edge detection. That
// is done directly (`prev_p_clk` is the generated edge detector's state), which
// skips a pass over every register: about 20% of the run time. A design kept
// hierarchical (compiled without SIMBOARD_FLAT) is simply settled: each of its
// modules detects the clock's edges itself. Returns true if any state changed.
inline bool falling_edge(design_t &top) {
	top.p_clk.set<bool>(false);
#ifdef SIMBOARD_FLAT
	if (top.design_t::eval()) {
		top.prev_p_clk = top.p_clk;
		return false;
	}
	bool changed = top.design_t::commit();
	return settle(top) || changed;
#else
	return settle(top);
#endif
}

volatile std::sig_atomic_t stop_requested = 0;

void on_signal(int) {
	stop_requested = 1;
}

double now() {
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

[[noreturn]] void fail(const char *what) {
	std::fprintf(stderr, "simboard: %s: %s\n", what, std::strerror(errno));
	std::exit(2);
}

[[noreturn]] void usage() {
	std::fprintf(stderr,
		"usage: simboard [--port N] [--reset-cycles N] [--accept-timeout SECONDS]\n"
		"                [--settle-cycles N] [--idle-ms N --idle-cycles N]\n");
	std::exit(2);
}

struct options {
	int port = 0;
	long reset_cycles = 4;
	double accept_timeout = 0;   // seconds; 0 waits forever
	uint64_t settle_cycles = 1 << 21;
	int idle_ms = -1;            // -1 sleeps forever while quiescent
	uint64_t idle_cycles = 0;
};

options parse_options(int argc, char **argv) {
	options opts;
	for (int i = 1; i < argc; i++) {
		auto arg = [&]() -> const char * {
			if (i + 1 >= argc)
				usage();
			return argv[++i];
		};
		if (!std::strcmp(argv[i], "--port"))
			opts.port = std::atoi(arg());
		else if (!std::strcmp(argv[i], "--reset-cycles"))
			opts.reset_cycles = std::atol(arg());
		else if (!std::strcmp(argv[i], "--accept-timeout"))
			opts.accept_timeout = std::atof(arg());
		else if (!std::strcmp(argv[i], "--settle-cycles"))
			opts.settle_cycles = std::strtoull(arg(), nullptr, 10);
		else if (!std::strcmp(argv[i], "--idle-ms"))
			opts.idle_ms = std::atoi(arg());
		else if (!std::strcmp(argv[i], "--idle-cycles"))
			opts.idle_cycles = std::strtoull(arg(), nullptr, 10);
		else
			usage();
	}
	if (opts.port < 0 || opts.port > 65535 || opts.reset_cycles < 1)
		usage();
	return opts;
}

// Listen on 127.0.0.1, report the port on stdout, accept one connection.
int accept_one(const options &opts) {
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		fail("socket");
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sockaddr_in addr {};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = htons(opts.port);
	if (bind(lfd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) < 0)
		fail("bind");
	if (listen(lfd, 1) < 0)
		fail("listen");
	socklen_t len = sizeof(addr);
	if (getsockname(lfd, reinterpret_cast<sockaddr *>(&addr), &len) < 0)
		fail("getsockname");
	std::printf("%d\n", ntohs(addr.sin_port));
	std::fflush(stdout);

	double deadline = now() + opts.accept_timeout;
	for (;;) {
		if (stop_requested)
			return -1;
		int timeout_ms = -1;
		if (opts.accept_timeout > 0) {
			double left = deadline - now();
			if (left <= 0) {
				std::fprintf(stderr, "simboard: no connection within %g s\n", opts.accept_timeout);
				std::exit(3);
			}
			timeout_ms = static_cast<int>(left * 1000) + 1;
		}
		pollfd pfd { lfd, POLLIN, 0 };
		int n = poll(&pfd, 1, timeout_ms);
		if (n < 0 && errno != EINTR)
			fail("poll");
		if (n > 0)
			break;
	}
	int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
	if (fd < 0)
		fail("accept");
	close(lfd);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

// Bytes between the socket and the design.
struct byte_link {
	int fd;
	bool open = true;

	static constexpr size_t IN_SIZE = 1 << 16;
	uint8_t in[IN_SIZE];
	size_t in_head = 0, in_tail = 0;

	std::vector<uint8_t> out;
	size_t out_head = 0;

	uint64_t rx_bytes = 0, tx_bytes = 0;
	double slept = 0;

	explicit byte_link(int fd) : fd(fd) { out.reserve(1 << 16); }

	bool pending_in() const { return in_head < in_tail; }
	bool pending_out() const { return out_head < out.size(); }

	bool in_room() {
		if (in_head == in_tail)
			in_head = in_tail = 0;
		if (in_tail == IN_SIZE && in_head > 0) {
			std::memmove(in, in + in_head, in_tail - in_head);
			in_tail -= in_head;
			in_head = 0;
		}
		return in_tail < IN_SIZE;
	}

	// Non-blocking receive into the input buffer.
	void receive() {
		if (!open || !in_room())
			return;
		ssize_t n = recv(fd, in + in_tail, IN_SIZE - in_tail, MSG_DONTWAIT);
		if (n > 0) {
			in_tail += n;
			rx_bytes += n;
#ifdef TCP_QUICKACK
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
#endif
		} else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			open = false;
		}
	}

	// Non-blocking send of the output buffer.
	void transmit() {
		if (!open || !pending_out())
			return;
		ssize_t n = send(fd, out.data() + out_head, out.size() - out_head,
		                 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			out_head += n;
			tx_bytes += n;
			if (out_head == out.size()) {
				out.clear();
				out_head = 0;
			} else if (out_head >= (1u << 20)) {
				out.erase(out.begin(), out.begin() + out_head);
				out_head = 0;
			}
		} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			open = false;
		}
	}

	// Exchange whatever can be exchanged without waiting.
	void service() {
		transmit();
		receive();
	}

	// Sleep until input arrives, the peer goes away, a signal arrives or
	// `timeout_ms` passes (-1: no limit), sending pending output meanwhile.
	// Returns true if input is pending.
	bool wait_for_input(int timeout_ms) {
		double start = now();
		double deadline = start + timeout_ms * 1e-3;
		while (open && !pending_in() && !stop_requested) {
			transmit();
			int wait_ms = -1;
			if (timeout_ms >= 0) {
				double left = deadline - now();
				if (left <= 0)
					break;
				wait_ms = static_cast<int>(left * 1000) + 1;
			}
			pollfd pfd { fd, static_cast<short>(POLLIN | (pending_out() ? POLLOUT : 0)), 0 };
			int n = poll(&pfd, 1, wait_ms);
			if (n < 0 && errno != EINTR)
				fail("poll");
			if (n > 0) {
				if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
					receive();
				if (pfd.revents & POLLOUT)
					transmit();
			}
		}
		slept += now() - start;
		return pending_in();
	}

	// Best-effort delivery of the remaining output before exit.
	void drain(double timeout) {
		double deadline = now() + timeout;
		while (open && pending_out() && now() < deadline) {
			pollfd pfd { fd, POLLOUT, 0 };
			if (poll(&pfd, 1, 100) > 0)
				transmit();
		}
	}
};

} // namespace

int main(int argc, char **argv) {
	options opts = parse_options(argc, argv);
	std::signal(SIGPIPE, SIG_IGN);
	std::signal(SIGTERM, on_signal);
	std::signal(SIGINT, on_signal);

	static design_t top;
	uint64_t cycles = 0;

	// Reset: hold rst high for a few clock cycles with both streams idle.
	top.p_rx____valid.set<bool>(false);
	top.p_tx____ready.set<bool>(false);
	set_reset(top, true);
	for (long i = 0; i < opts.reset_cycles; i++) {
		top.p_clk.set<bool>(false);
		settle(top);
		top.p_clk.set<bool>(true);
		settle(top);
		cycles++;
	}
	set_reset(top, false);

	int fd = accept_one(opts);
	if (fd < 0)
		return 0;
	static byte_link io(fd);
	double start = now();

	constexpr int IO_INTERVAL = 1024;   // cycles between two non-blocking I/O checks
	int io_countdown = IO_INTERVAL;
	uint64_t idle_left = 0;             // cycles to clock although quiescent
	uint64_t quiet = 0;                 // consecutive cycles with quiescent ports
	bool edge_changed = true;           // the last clock edge changed some state

	top.p_tx____ready.set<bool>(true);
	while (io.open && !stop_requested) {
		bool have = io.pending_in();
		top.p_rx____valid.set<bool>(have);
		if (have)
			top.p_rx____payload.set<uint8_t>(io.in[io.in_head]);
		bool changed = falling_edge(top);

		bool rx_ready = top.p_rx____ready.get<bool>();
		bool tx_valid = top.p_tx____valid.get<bool>();
		if (!have && rx_ready && !tx_valid) {
			if (idle_left == 0 && ((!changed && !edge_changed) || quiet >= opts.settle_cycles)) {
				// Quiescent: nothing can happen until a byte arrives.
				if (!io.wait_for_input(opts.idle_ms) && io.open && opts.idle_ms >= 0)
					idle_left = opts.idle_cycles;
				io_countdown = IO_INTERVAL;
				quiet = 0;
				continue;   // re-evaluate with the new input before the clock edge
			}
			quiet++;
		} else {
			quiet = 0;
		}
		if (idle_left > 0)
			idle_left = have ? 0 : idle_left - 1;

		if (have && rx_ready)
			io.in_head++;
		if (tx_valid)
			io.out.push_back(top.p_tx____payload.get<uint8_t>());

		top.p_clk.set<bool>(true);
		edge_changed = settle(top);
		cycles++;

		if (--io_countdown == 0) {
			io_countdown = IO_INTERVAL;
			io.service();
		}
	}
	io.drain(1.0);
	close(fd);

	double seconds = now() - start;
	double busy = seconds - io.slept;
	if (busy <= 0)
		busy = 1e-9;
	std::fprintf(stderr,
		"simboard: cycles=%llu seconds=%.6f busy_seconds=%.6f cycles_per_second=%.0f "
		"rx_bytes=%llu tx_bytes=%llu\n",
		static_cast<unsigned long long>(cycles), seconds, busy, cycles / busy,
		static_cast<unsigned long long>(io.rx_bytes),
		static_cast<unsigned long long>(io.tx_bytes));
	return 0;
}
