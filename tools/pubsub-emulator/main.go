// Command pubsub-emulator serves Google's in-memory fake Pub/Sub (pstest) over gRPC on a local port,
// standing in for the gcloud emulator, which cannot be downloaded here. Clients reach it through
// PUBSUB_EMULATOR_HOST=HOST:PORT. State lives in memory only and is lost when the process stops.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8085, "port to listen on (0 picks a free one)")
	flag.Parse()
	// pstest's defaults are kept: it accepts ack deadlines of 0..600 s (the real service 10..600); its
	// SetMinAckDeadline(10s) would also refuse 0, which means "the default (10 s)" to the real service.

	// pstest panics when it cannot listen (port taken); turn that into one line and exit status 1.
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "pubsub-emulator:", r)
			os.Exit(1)
		}
	}()
	// Catch the signals before listening, so a caller that stops us right after the line gets a clean exit.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	srv := pstest.NewServerWithAddress(net.JoinHostPort(*host, strconv.Itoa(*port)))
	fmt.Printf("listening on %s\n", srv.Addr) // the only stdout line: callers may wait for it
	<-stop
	srv.Close()
}
