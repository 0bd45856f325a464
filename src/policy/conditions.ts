/**
 * Evaluating one compiled condition against a session's facts. Pure: the result says whether
 * it holds and, line by line, why, for the trace that `smtpgate policy test` prints.
 *
 * A fact that the session doesn't have (no user, no TLS, no SIZE declared) makes a condition
 * on it false, and `not:` of it true.
 */
import { parseAddressList } from './addresses.js';
import { addressPatterns, domainOf, hasSenderRouting, type PatternList } from './patterns.js';
import type { BuiltinCheck, Condition, PolicySettings, PolicyStage, SessionFacts, UserFacts } from './types.js';

export interface ConditionContext {
  readonly stage: PolicyStage;
  readonly facts: SessionFacts;
  readonly settings: PolicySettings;
}

export interface ConditionResult {
  readonly ok: boolean;
  readonly why: readonly string[];
}

const yes = (why: string): ConditionResult => ({ ok: true, why: [why] });
const no = (why: string): ConditionResult => ({ ok: false, why: [why] });
const result = (ok: boolean, why: string): ConditionResult => ({ ok, why: [why] });

/** Values in a trace line: quoted, cut short, never a line break. */
export function show(value: string, max = 80): string {
  // eslint-disable-next-line no-control-regex
  const clean = value.replace(/[\x00-\x1f\x7f]/g, '?');
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}…` : clean);
}

const showList = (values: readonly string[]) => `[${values.map((v) => show(v, 60)).join(', ')}]`;

/** The client counts as trusted: the listener said so, or its address is in `trustedNetworks`. */
export function isTrusted(facts: SessionFacts, settings: PolicySettings): boolean {
  return facts.trusted || settings.trustedNetworks.has(facts.ip);
}

/** An address of ours: no domain (local), or an internal domain without sender-specified routing. */
export function isInternalAddress(address: string, settings: PolicySettings): boolean {
  if (hasSenderRouting(address)) return false;
  const domain = domainOf(address);
  return domain === '' || settings.internalDomains.match(domain) !== undefined;
}

/** The recipients a recipient condition looks at: the one being decided at rcpt, all of them at data. */
function recipientsOf(ctx: ConditionContext): readonly string[] {
  if (ctx.stage === 'rcpt') return ctx.facts.recipient === undefined ? [] : [ctx.facts.recipient];
  return ctx.facts.recipients;
}

function matchAny(label: string, values: readonly string[], list: PatternList, what: string): ConditionResult {
  for (const v of values) {
    const p = list.match(v);
    if (p !== undefined) return yes(`${label}: ${show(v)} matches ${show(p)}`);
  }
  if (values.length === 0) return no(`${label}: no ${what}`);
  return no(`${label}: ${values.length === 1 ? show(values[0]!) : showList(values)} matches none of [${list.label}]`);
}

const userPatternCache = new WeakMap<readonly string[], PatternList>();
function allowedAddresses(user: UserFacts): PatternList {
  let list = userPatternCache.get(user.addresses);
  if (!list) {
    list = addressPatterns(user.addresses);
    userPatternCache.set(user.addresses, list);
  }
  return list;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
/** Minutes since midnight and day of week (0 = Sunday) in `timezone`. */
export function localTime(now: Date, timezone: string): { minutes: number; day: number; text: string } {
  let f = formatters.get(timezone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: timezone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit', weekday: 'short' });
    formatters.set(timezone, f);
  }
  const parts = Object.fromEntries(f.formatToParts(now).map((p) => [p.type, p.value]));
  const hour = Number(parts.hour) % 24;
  const minute = Number(parts.minute);
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'].indexOf(parts.weekday ?? '');
  return { minutes: hour * 60 + minute, day, text: `${parts.weekday} ${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')} ${timezone}` };
}

export function evaluateCondition(cond: Condition, ctx: ConditionContext): ConditionResult {
  const { facts, settings } = ctx;
  switch (cond.kind) {
    case 'all': {
      const why: string[] = [];
      for (const c of cond.of) {
        const r = evaluateCondition(c, ctx);
        why.push(...r.why);
        if (!r.ok) return { ok: false, why };
      }
      return { ok: true, why };
    }
    case 'any': {
      const why: string[] = [];
      for (const c of cond.of) {
        const r = evaluateCondition(c, ctx);
        if (r.ok) return { ok: true, why: r.why.map((w) => `any: ${w}`) };
        why.push(...r.why);
      }
      return { ok: false, why: why.length ? why.map((w) => `any: ${w}`) : ['any: (empty list)'] };
    }
    case 'not': {
      const r = evaluateCondition(cond.of, ctx);
      return { ok: !r.ok, why: r.why.map((w) => `not: ${w}`) };
    }
    case 'clientIp':
      return result(cond.set.has(facts.ip), `clientIp: ${facts.ip} is ${cond.set.has(facts.ip) ? '' : 'not '}in [${cond.text}]`);
    case 'listener':
      return result(cond.names.includes(facts.listener), `listener: ${show(facts.listener)} is ${cond.names.includes(facts.listener) ? '' : 'not '}one of ${showList(cond.names)}`);
    case 'tls':
      return result((facts.tls !== undefined) === cond.value, `tls: ${facts.tls ? `session uses ${facts.tls.version}` : 'session has no TLS'}`);
    case 'tlsVersion':
      if (!facts.tls) return no('tlsVersion: session has no TLS');
      return result(cond.versions.includes(facts.tls.version), `tlsVersion: ${facts.tls.version} is ${cond.versions.includes(facts.tls.version) ? '' : 'not '}one of ${cond.versions.join(', ')}`);
    case 'authenticated':
      return result(facts.authenticated === cond.value, `authenticated: ${facts.authenticated ? `yes (${show(facts.user?.name ?? '')})` : 'no'}`);
    case 'trusted': {
      const t = isTrusted(facts, settings);
      return result(t === cond.value, `trusted: client ${facts.ip} is ${t ? '' : 'not '}trusted`);
    }
    case 'user':
      if (!facts.user) return no('user: not authenticated');
      return matchAny('user', [facts.user.name], cond.list, 'user');
    case 'group': {
      if (!facts.user) return no('group: not authenticated');
      const have = facts.user.groups;
      const hit = cond.groups.find((g) => have.some((h) => h.toLowerCase() === g.toLowerCase()));
      return hit !== undefined
        ? yes(`group: ${show(facts.user.name)} is in ${show(hit)}`)
        : no(`group: ${show(facts.user.name)} is in ${have.length ? showList(have) : 'no group'}, none of ${showList(cond.groups)}`);
    }
    case 'helo':
      return matchAny('helo', facts.helo === undefined ? [] : [facts.helo], cond.list, 'EHLO name');
    case 'sender':
      if (facts.from === undefined) return no('sender: no MAIL FROM');
      return matchAny('sender', [facts.from === '' ? '<>' : facts.from], cond.list, 'sender');
    case 'senderDomain':
      if (!facts.from) return no('senderDomain: null sender <> has no domain');
      return matchAny('senderDomain', [domainOf(facts.from)], cond.list, 'sender domain');
    case 'senderInternal': {
      if (!facts.from) return no('senderInternal: null sender <> has no domain');
      const internal = isInternalAddress(facts.from, settings);
      return result(internal === cond.value, `senderInternal: ${show(facts.from)} is ${internal ? 'internal' : 'not internal'}`);
    }
    case 'recipient':
      return matchAny('recipient', recipientsOf(ctx), cond.list, 'recipient');
    case 'recipientDomain':
      return matchAny('recipientDomain', recipientsOf(ctx).map(domainOf), cond.list, 'recipient');
    case 'recipientInternal': {
      const rcpts = recipientsOf(ctx);
      const hit = rcpts.find((r) => isInternalAddress(r, settings) === cond.value);
      if (hit !== undefined) return yes(`recipientInternal: ${show(hit)} is ${cond.value ? 'internal' : 'not internal'}`);
      if (rcpts.length === 0) return no('recipientInternal: no recipient');
      return no(`recipientInternal: ${rcpts.length === 1 ? show(rcpts[0]!) : `every recipient of ${showList(rcpts)}`} is ${cond.value ? 'not internal' : 'internal'}`);
    }
    case 'recipientsOver': {
      const n = ctx.stage === 'rcpt' ? facts.recipients.length + 1 : facts.recipients.length;
      return result(n > cond.max, `recipientsOver: ${n} recipient${n === 1 ? '' : 's'}${ctx.stage === 'rcpt' ? ' with this one' : ''}, limit ${cond.max}`);
    }
    case 'sizeOver': {
      const size = cond.fact === 'declaredSize' ? facts.declaredSize : facts.messageSize;
      const label = cond.fact === 'declaredSize' ? 'declaredSizeOver' : 'messageSizeOver';
      if (size === undefined) return no(`${label}: ${cond.fact === 'declaredSize' ? 'no SIZE declared' : 'size not known'}`);
      return result(size > cond.max, `${label}: ${size} bytes ${size > cond.max ? '>' : '<='} ${cond.max}`);
    }
    case 'header': {
      const fields = (facts.headers ?? []).filter((h) => h.name === cond.name);
      if (fields.length === 0) return no(`header: no ${cond.name} header`);
      for (const h of fields) {
        for (const re of cond.patterns) {
          if (re.test(h.decoded) || re.test(h.value)) return yes(`header: ${cond.name} ${show(h.decoded)} matches /${re.source}/`);
        }
      }
      return no(`header: ${cond.name} ${show(fields[0]!.decoded)} matches none of ${cond.patterns.map((r) => `/${r.source}/`).join(', ')}`);
    }
    case 'attachmentName': {
      const names = (facts.attachments ?? []).flatMap((a) => a.filenames);
      return matchAny('attachmentName', names, cond.list, 'attachment with a file name');
    }
    case 'attachmentType':
      return matchAny('attachmentType', (facts.attachments ?? []).map((a) => a.contentType), cond.list, 'MIME part');
    case 'scanIncomplete': {
      const v = facts.scanIncomplete === true;
      return result(v === cond.value, `scanIncomplete: the MIME scan was ${v ? 'cut short by its limits' : 'complete'}`);
    }
    case 'time': {
      const t = localTime(facts.now, settings.timezone);
      const ok = cond.ranges.some((r) => (r.from <= r.to ? t.minutes >= r.from && t.minutes < r.to : t.minutes >= r.from || t.minutes < r.to));
      return result(ok, `time: ${t.text} is ${ok ? '' : 'not '}within ${cond.text}`);
    }
    case 'days': {
      const t = localTime(facts.now, settings.timezone);
      const ok = cond.days.has(t.day);
      return result(ok, `days: ${t.text} is ${ok ? '' : 'not '}on ${cond.text}`);
    }
    case 'builtin':
      return evaluateBuiltin(cond.check, ctx);
  }
}

/** A built-in check holds when the built-in rule should act (e.g. the sender is NOT owned). */
function evaluateBuiltin(check: BuiltinCheck, ctx: ConditionContext): ConditionResult {
  const { facts, settings, stage } = ctx;
  switch (check.type) {
    case 'sender_binding': {
      if (!facts.user) return no('sender_binding: not authenticated, nothing to bind');
      const user = facts.user;
      const allowed = allowedAddresses(user);
      const owns = (a: string) => allowed.match(a);
      const label = `${show(user.name)}'s addresses ${user.addresses.length ? showList(user.addresses) : '(none configured)'}`;
      if (stage === 'mail') {
        const from = facts.from ?? '';
        if (from === '') return check.allowNullSender ? no('sender_binding: null sender <> is allowed') : yes('sender_binding: null sender <> is not allowed for an authenticated user');
        const p = owns(from);
        return p !== undefined ? no(`sender_binding: MAIL FROM ${show(from)} matches ${show(p)} of ${show(user.name)}`) : yes(`sender_binding: MAIL FROM ${show(from)} is not among ${label}`);
      }
      // data: every address in every From: header (RFC 5322 §3.6.2 allows a list).
      const fromHeaders = (facts.headers ?? []).filter((h) => h.name === 'from');
      if (fromHeaders.length === 0) return no('sender_binding: the message has no From: header');
      for (const h of fromHeaders) {
        const list = parseAddressList(h.decoded);
        if (list.invalid.length > 0) return yes(`sender_binding: From: ${show(list.invalid[0]!)} is not an address`);
        if (list.addresses.length === 0) return yes('sender_binding: From: header has no address');
        for (const a of list.addresses) {
          if (owns(a) === undefined) return yes(`sender_binding: From: ${show(a)} is not among ${label}`);
        }
      }
      return no(`sender_binding: every From: address belongs to ${show(user.name)}`);
    }
    case 'relay_protection': {
      if (facts.authenticated) return no('relay_protection: client is authenticated');
      if (isTrusted(facts, settings)) return no(`relay_protection: client ${facts.ip} is trusted`);
      const rcpt = facts.recipient ?? '';
      if (isInternalAddress(rcpt, settings)) return no(`relay_protection: ${show(rcpt)} is internal`);
      const why = hasSenderRouting(rcpt) ? 'has sender-specified routing (%, ! or @ in the local part)' : `domain ${show(domainOf(rcpt))} is not internal`;
      return yes(`relay_protection: ${show(rcpt)} ${why}, and the client is neither authenticated nor trusted`);
    }
    case 'trusted_networks': {
      const t = check.networks ? check.networks.has(facts.ip) : isTrusted(facts, settings);
      return result(t, `trusted_networks: client ${facts.ip} is ${t ? '' : 'not '}in ${check.networks ? "the rule's networks" : 'the trusted networks'}`);
    }
    case 'recipient_domains': {
      const rcpt = facts.recipient ?? '';
      const domain = domainOf(rcpt);
      const p = check.allow.match(domain);
      if (p !== undefined) return no(`recipient_domains: ${show(domain)} matches ${show(p)}`);
      if (check.allowInternal && isInternalAddress(rcpt, settings)) return no(`recipient_domains: ${show(rcpt)} is internal`);
      return yes(`recipient_domains: ${show(domain)} is not in [${check.allow.label}]${check.allowInternal ? ' nor internal' : ''}`);
    }
    case 'max_recipients': {
      const n = facts.recipients.length;
      return result(n >= check.max, `max_recipients: ${n} accepted so far, limit ${check.max}`);
    }
    case 'max_size': {
      const size = stage === 'mail' ? facts.declaredSize : facts.messageSize;
      if (size === undefined) return no(`max_size: ${stage === 'mail' ? 'no SIZE declared' : 'size not known'}`);
      return result(size > check.max, `max_size: ${size} bytes ${size > check.max ? '>' : '<='} ${check.max}`);
    }
  }
}
