package dbmigrate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Backup and restore report their progress in tables with data: pg_dump
// --verbose names each table as it starts dumping its contents, and a
// restore script has one COPY per table with data. The tool's own byte
// counts are not known ahead (the archive is compressed).

// dataTables counts the tables pg_dump dumps the contents of.
func dataTables(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND `+userSchema).Scan(&n)
	return n, err
}

// dumpWithProgress runs pg_dump to file, calling progress (when set) as
// it starts on each table's contents.
func dumpWithProgress(ctx context.Context, pool *pgxpool.Pool, in *dbInfo, pgDump, file string, progress func(done, total int64)) error {
	args := []string{"--format=custom", "--file=" + file, "--dbname=" + in.connArgs}
	if progress == nil {
		_, err := runTool(ctx, in.env, pgDump, args...)
		return err
	}
	total, err := dataTables(ctx, pool)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, pgDump, append(args, "--verbose")...)
	cmd.Env = in.env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrTool, filepath.Base(pgDump), err)
	}
	progress(0, total)
	var errs []string // what is not --verbose chatter, for the error
	sc := bufio.NewScanner(stderr)
	done := int64(0)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "dumping contents of table"):
			progress(min(done, total), total)
			done++
		case strings.Contains(line, "error:") || strings.Contains(line, "warning:"):
			errs = append(errs, line)
		}
	}
	_, _ = io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s: %w: %s", ErrTool, filepath.Base(pgDump), err, strings.Join(errs, "; "))
	}
	progress(total, total)
	return nil
}

// copyCounter passes a restore script through, calling progress at each
// table's COPY.
type copyCounter struct {
	r        io.Reader
	done     int64
	progress func(done int64)
	carry    []byte // the end of the last chunk, for a COPY split across reads
}

var copyStart = []byte("\nCOPY ")

func (c *copyCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		buf := append(c.carry, p[:n]...)
		k := int64(bytes.Count(buf, copyStart))
		if k > 0 {
			c.done += k
			c.progress(c.done - 1) // that table is starting
		}
		keep := min(len(buf), len(copyStart)-1)
		c.carry = append(c.carry[:0], buf[len(buf)-keep:]...)
	}
	return n, err
}
