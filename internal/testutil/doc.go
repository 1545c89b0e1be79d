// Package testutil is the one home of what this module's tests share: building the
// programs a test starts (once per test process), short directories for Unix sockets,
// waiting for an observation with a deadline, and the capnp client-leak check every
// package that creates capnp clients runs in its TestMain.
//
// Only _test files and the test programs under tests/progs may import it
// (tests/deps checks that): it links package testing.
//
// A package whose tests create capnp clients:
//
//	func TestMain(m *testing.M) { testutil.Main(m) }
//
// One that also starts programs:
//
//	var progs *testutil.Programs
//
//	func TestMain(m *testing.M) {
//		var err error
//		progs, err = testutil.BuildPrograms(testutil.Race(), "./services/execd-stub", "./tests/progs/testchild")
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := testutil.Run(m)
//		progs.Remove()
//		os.Exit(code)
//	}
package testutil
