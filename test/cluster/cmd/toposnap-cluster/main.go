// Command toposnap-cluster keeps a local control plane (package test/cluster)
// running in the background, for demos and manual testing.
//
//	toposnap-cluster up   [--dir DIR] [--bin BINDIR] [--no-kwok]
//	toposnap-cluster down [--dir DIR]
//
// up prints the kubeconfig's path and an export line for the shell; down
// stops the cluster and removes its files. DIR defaults to
// $HOME/.cache/toposnap/cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/toposnap/toposnap/test/cluster"
)

const usage = "usage: toposnap-cluster up|down [--dir DIR] [--bin BINDIR] [--no-kwok]"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "toposnap-cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	verb := args[0]
	flags := flag.NewFlagSet(verb, flag.ContinueOnError)
	dir := flags.String("dir", defaultDir(), "work directory of the cluster")
	bin := flags.String("bin", "", "directory of the control-plane binaries (default: built by hack/build-cluster-bins.sh)")
	noKwok := flags.Bool("no-kwok", false, "run no kwok: nodes get no heartbeats and pods stay Pending")
	if err := flags.Parse(args[1:]); err != nil {
		return err
	}
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	switch verb {
	case "up":
		return up(ctx, absDir, *bin, *noKwok)
	case "serve": // what up runs in the background
		return cluster.Serve(ctx, cluster.Options{Dir: absDir, BinDir: *bin, WithoutKwok: *noKwok})
	case "down":
		return cluster.Down(ctx, absDir)
	default:
		return fmt.Errorf("unknown command %q\n%s", verb, usage)
	}
}

// up builds the binaries in the foreground, where the user sees progress,
// then starts this program's serve mode in the background.
func up(ctx context.Context, dir, bin string, noKwok bool) error {
	var err error
	if bin == "" {
		if bin, err = cluster.BinDir(); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	serve := []string{self, "serve", "--dir=" + dir, "--bin=" + bin, "--no-kwok=" + strconv.FormatBool(noKwok)}
	kubeconfig, err := cluster.Up(ctx, dir, serve)
	if err != nil {
		return err
	}
	fmt.Printf("kubeconfig: %s\nexport KUBECONFIG=%s\n", kubeconfig, kubeconfig)
	return nil
}

func defaultDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "toposnap-cluster")
	}
	return filepath.Join(home, ".cache", "toposnap", "cluster")
}
