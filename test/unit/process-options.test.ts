/**
 * The process set-up decisions: smtpgate's semi-space for its workers unless the operator set
 * one (command line or NODE_OPTIONS, in any spelling V8 takes), and kernel balancing for the
 * cluster unless NODE_CLUSTER_SCHED_POLICY says otherwise.
 */
import { describe, expect, test } from 'vitest';
import { schedulingPolicy, semiSpaceSource, workerExecArgv, SEMI_SPACE_FLAG } from '../../src/cluster/process-options.js';

describe('the workers\' semi-space', () => {
  test('is smtpgate\'s when neither the command line nor NODE_OPTIONS sets one', () => {
    expect(SEMI_SPACE_FLAG).toBe('--max-semi-space-size=64');
    expect(semiSpaceSource([], undefined)).toBe('node default');
    expect(semiSpaceSource(['--enable-source-maps'], '--max-old-space-size=512')).toBe('node default');
    expect(workerExecArgv(['--enable-source-maps'], '--max-old-space-size=512')).toEqual(['--enable-source-maps', SEMI_SPACE_FLAG]);
  });

  test.each([
    [['--max-semi-space-size=8'], 'command line'],
    [['--max_semi_space_size=8'], 'command line'],
    [['--max-semi-space-size', '8'], 'command line'],
    [['--cpu-prof', '--max_semi-space_size=32'], 'command line'],
  ] as const)('an operator\'s %j on the command line is kept and nothing is added', (argv, source) => {
    expect(semiSpaceSource(argv, undefined)).toBe(source);
    expect(workerExecArgv(argv, undefined)).toEqual(argv);
  });

  test.each(['--max-semi-space-size=8', '--inspect --max_semi_space_size=2', '--max-semi-space-size 128'])(
    'an operator\'s NODE_OPTIONS %j is kept (the workers inherit it) and nothing is added',
    (nodeOptions) => {
      expect(semiSpaceSource([], nodeOptions)).toBe('NODE_OPTIONS');
      expect(workerExecArgv(['--enable-source-maps'], nodeOptions)).toEqual(['--enable-source-maps']);
    },
  );

  test('a flag that only starts the same way is not the semi-space', () => {
    expect(semiSpaceSource(['--max-semi-space-sizes=8'], '--max-semi-space-size-x')).toBe('node default');
  });
});

describe('the cluster\'s scheduling', () => {
  test('is the kernel\'s (none) by default', () => {
    expect(schedulingPolicy({})).toEqual({ policy: 'none', source: 'smtpgate default' });
  });

  test.each(['rr', 'none'] as const)('NODE_CLUSTER_SCHED_POLICY=%s wins', (value) => {
    expect(schedulingPolicy({ NODE_CLUSTER_SCHED_POLICY: value })).toEqual({ policy: value, source: 'NODE_CLUSTER_SCHED_POLICY' });
  });

  // Node ignores other values too (and would round-robin): smtpgate's default stands.
  test('a value node doesn\'t know is ignored', () => {
    expect(schedulingPolicy({ NODE_CLUSTER_SCHED_POLICY: 'RR' })).toEqual({ policy: 'none', source: 'smtpgate default' });
  });
});
