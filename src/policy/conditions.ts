/**
 * Evaluating one compiled condition against a session's facts. Pure: the result says whether
 * it holds and, when asked, line by line why, for the trace that `smtpgate policy test` prints.
 * Without the trace no text is built: this runs for every command of every session.
 *
 * A fact that the session doesn't have (no user, no TLS, no SIZE declared) makes a condition
 * on it false, and `not:` of it true.
 */
import { parseAddressList } from './addresses.js';
import { addressPatterns, domainOf, hasSenderRouting, type PatternList } from './patterns.js';
import type { BuiltinCheck, Condition, Header, MimePart, PolicySettings, PolicyStage, SessionFacts, TimeRange, UserFacts } from './types.js';

const NO_HEADERS: readonly Header[] = [];
const NO_PARTS: readonly MimePart[] = [];

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/g;

/** Values in a trace line: quoted, cut short, never a line break. */
export function show(value: string, max = 80): string {
  const clean = value.replace(CONTROL, '?');
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}…` : clean);
}

const showList = (values: readonly string[]) => `[${values.map((v) => show(v, 60)).join(', ')}]`;

/** The client counts as trusted: the listener said so, or its address is in `trustedNetworks`. */
export function isTrusted(facts: SessionFacts, settings: PolicySettings): boolean {
  // An empty list matches nothing: skip parsing the address.
  return facts.trusted || (settings.trustedNetworks.size > 0 && settings.trustedNetworks.has(facts.ip));
}

/** An address of ours: no domain (local), or an internal domain without sender-specified routing. */
export function isInternalAddress(address: string, settings: PolicySettings): boolean {
  if (hasSenderRouting(address)) return false;
  const domain = domainOf(address);
  return domain === '' || settings.internalDomains.match(domain) !== undefined;
}

/** The recipients a recipient condition looks at: the one being decided at rcpt, all of them at data. */
function recipientsOf(stage: PolicyStage, facts: SessionFacts): readonly string[] {
  if (stage === 'rcpt') return facts.recipient === undefined ? [] : [facts.recipient];
  return facts.recipients;
}

/** Whether one of `values` (each through `map`, if given) is in `list`; `why` gets the trace line. */
function matchAny(label: string, values: readonly string[], list: PatternList, what: string, why: string[] | undefined, map?: (v: string) => string): boolean {
  for (const raw of values) {
    const v = map ? map(raw) : raw;
    const p = list.match(v);
    if (p !== undefined) {
      if (why) why.push(`${label}: ${show(v)} matches ${show(p)}`);
      return true;
    }
  }
  if (why) {
    const shown = map ? values.map(map) : values;
    why.push(shown.length === 0 ? `${label}: no ${what}` : `${label}: ${shown.length === 1 ? show(shown[0]!) : showList(shown)} matches none of [${list.label}]`);
  }
  return false;
}

/** `matchAny` of one value, or of none when it is undefined, without a list around it. */
function matchOne(label: string, value: string | undefined, list: PatternList, what: string, why: string[] | undefined): boolean {
  const p = value === undefined ? undefined : list.match(value);
  if (why) {
    if (value === undefined) why.push(`${label}: no ${what}`);
    else why.push(p !== undefined ? `${label}: ${show(value)} matches ${show(p)}` : `${label}: ${show(value)} matches none of [${list.label}]`);
  }
  return p !== undefined;
}

/** The first of the condition's groups that the user is in (case-insensitive). */
function groupHit(wanted: readonly string[], have: readonly string[]): string | undefined {
  for (const g of wanted) {
    const lower = g.toLowerCase();
    for (const h of have) if (h.toLowerCase() === lower) return g;
  }
  return undefined;
}

const userPatternCache = new WeakMap<readonly string[], PatternList>();
/** Whether `address` is one of the user's own (the addresses sender_binding allows them). */
export function userOwnsAddress(user: UserFacts, address: string): boolean {
  return allowedAddresses(user).match(address) !== undefined;
}

function allowedAddresses(user: UserFacts): PatternList {
  let list = userPatternCache.get(user.addresses);
  if (!list) {
    list = addressPatterns(user.addresses);
    userPatternCache.set(user.addresses, list);
  }
  return list;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
const WEEKDAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

interface LocalTime {
  /** Minutes since midnight. */
  readonly minutes: number;
  /** Day of the week, 0 = Sunday. */
  readonly day: number;
  readonly weekday: string | undefined;
}

/** The wall clock in `timezone` at `now`. */
function localClock(now: Date, timezone: string): LocalTime {
  let f = formatters.get(timezone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: timezone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit', weekday: 'short' });
    formatters.set(timezone, f);
  }
  let hour = NaN;
  let minute = NaN;
  let weekday: string | undefined;
  for (const p of f.formatToParts(now)) {
    if (p.type === 'hour') hour = Number(p.value) % 24;
    else if (p.type === 'minute') minute = Number(p.value);
    else if (p.type === 'weekday') weekday = p.value;
  }
  return { minutes: hour * 60 + minute, day: WEEKDAYS.indexOf(weekday ?? ''), weekday };
}

/** "Mon 09:05 Europe/Berlin", for the trace. */
function clockText(t: LocalTime, timezone: string): string {
  const hour = Math.floor(t.minutes / 60);
  return `${t.weekday} ${String(hour).padStart(2, '0')}:${String(t.minutes - hour * 60).padStart(2, '0')} ${timezone}`;
}

function inRanges(minutes: number, ranges: readonly TimeRange[]): boolean {
  for (const r of ranges) {
    if (r.from <= r.to ? minutes >= r.from && minutes < r.to : minutes >= r.from || minutes < r.to) return true;
  }
  return false;
}

/**
 * Whether a condition holds for the session at `stage`. When `why` is given, one line per
 * condition looked at is pushed onto it, for the trace; without it no text is built at all.
 */
export function holds(cond: Condition, stage: PolicyStage, facts: SessionFacts, settings: PolicySettings, why: string[] | undefined): boolean {
  switch (cond.kind) {
    case 'all':
      // Every part's lines, up to the first part that fails.
      for (const c of cond.of) if (!holds(c, stage, facts, settings, why)) return false;
      return true;
    case 'any': {
      // The lines of the part that holds; when none does, of them all.
      const failed: string[] | undefined = why && [];
      for (const c of cond.of) {
        const part: string[] | undefined = why && [];
        if (holds(c, stage, facts, settings, part)) {
          if (why) for (const w of part!) why.push(`any: ${w}`);
          return true;
        }
        if (failed) failed.push(...part!);
      }
      if (why) {
        if (failed!.length === 0) why.push('any: (empty list)');
        for (const w of failed!) why.push(`any: ${w}`);
      }
      return false;
    }
    case 'not': {
      const part: string[] | undefined = why && [];
      const ok = !holds(cond.of, stage, facts, settings, part);
      if (why) for (const w of part!) why.push(`not: ${w}`);
      return ok;
    }
    case 'clientIp': {
      const ok = cond.set.has(facts.ip);
      if (why) why.push(`clientIp: ${facts.ip} is ${ok ? '' : 'not '}in [${cond.text}]`);
      return ok;
    }
    case 'listener': {
      const ok = cond.names.includes(facts.listener);
      if (why) why.push(`listener: ${show(facts.listener)} is ${ok ? '' : 'not '}one of ${showList(cond.names)}`);
      return ok;
    }
    case 'tls':
      if (why) why.push(`tls: ${facts.tls ? `session uses ${facts.tls.version}` : 'session has no TLS'}`);
      return (facts.tls !== undefined) === cond.value;
    case 'tlsVersion': {
      if (!facts.tls) {
        if (why) why.push('tlsVersion: session has no TLS');
        return false;
      }
      const ok = cond.versions.includes(facts.tls.version);
      if (why) why.push(`tlsVersion: ${facts.tls.version} is ${ok ? '' : 'not '}one of ${cond.versions.join(', ')}`);
      return ok;
    }
    case 'authenticated':
      if (why) why.push(`authenticated: ${facts.authenticated ? `yes (${show(facts.user?.name ?? '')})` : 'no'}`);
      return facts.authenticated === cond.value;
    case 'authMethod': {
      const ok = facts.authMethod !== undefined && cond.methods.includes(facts.authMethod);
      if (why) why.push(`authMethod: ${facts.authMethod === undefined ? 'not authenticated' : `${facts.authMethod} is ${ok ? '' : 'not '}one of ${cond.methods.join(', ')}`}`);
      return ok;
    }
    case 'trusted': {
      const t = isTrusted(facts, settings);
      if (why) why.push(`trusted: client ${facts.ip} is ${t ? '' : 'not '}trusted`);
      return t === cond.value;
    }
    case 'user':
      if (!facts.user) {
        if (why) why.push('user: not authenticated');
        return false;
      }
      return matchOne('user', facts.user.name, cond.list, 'user', why);
    case 'group': {
      if (!facts.user) {
        if (why) why.push('group: not authenticated');
        return false;
      }
      const have = facts.user.groups;
      const hit = groupHit(cond.groups, have);
      if (why) {
        why.push(
          hit !== undefined
            ? `group: ${show(facts.user.name)} is in ${show(hit)}`
            : `group: ${show(facts.user.name)} is in ${have.length ? showList(have) : 'no group'}, none of ${showList(cond.groups)}`,
        );
      }
      return hit !== undefined;
    }
    case 'helo':
      return matchOne('helo', facts.helo, cond.list, 'EHLO name', why);
    case 'sender':
      if (facts.from === undefined) {
        if (why) why.push('sender: no MAIL FROM');
        return false;
      }
      return matchOne('sender', facts.from === '' ? '<>' : facts.from, cond.list, 'sender', why);
    case 'senderDomain':
      if (!facts.from) {
        if (why) why.push('senderDomain: null sender <> has no domain');
        return false;
      }
      return matchOne('senderDomain', domainOf(facts.from), cond.list, 'sender domain', why);
    case 'senderInternal': {
      if (!facts.from) {
        if (why) why.push('senderInternal: null sender <> has no domain');
        return false;
      }
      const internal = isInternalAddress(facts.from, settings);
      if (why) why.push(`senderInternal: ${show(facts.from)} is ${internal ? 'internal' : 'not internal'}`);
      return internal === cond.value;
    }
    case 'recipient':
      if (stage === 'rcpt') return matchOne('recipient', facts.recipient, cond.list, 'recipient', why);
      return matchAny('recipient', facts.recipients, cond.list, 'recipient', why);
    case 'recipientDomain':
      if (stage === 'rcpt') return matchOne('recipientDomain', facts.recipient === undefined ? undefined : domainOf(facts.recipient), cond.list, 'recipient', why);
      return matchAny('recipientDomain', facts.recipients, cond.list, 'recipient', why, domainOf);
    case 'recipientInternal': {
      const rcpts = recipientsOf(stage, facts);
      let hit: string | undefined;
      for (const r of rcpts) {
        if (isInternalAddress(r, settings) === cond.value) {
          hit = r;
          break;
        }
      }
      if (why) {
        if (hit !== undefined) why.push(`recipientInternal: ${show(hit)} is ${cond.value ? 'internal' : 'not internal'}`);
        else if (rcpts.length === 0) why.push('recipientInternal: no recipient');
        else why.push(`recipientInternal: ${rcpts.length === 1 ? show(rcpts[0]!) : `every recipient of ${showList(rcpts)}`} is ${cond.value ? 'not internal' : 'internal'}`);
      }
      return hit !== undefined;
    }
    case 'recipientsOver': {
      const n = stage === 'rcpt' ? facts.recipients.length + 1 : facts.recipients.length;
      if (why) why.push(`recipientsOver: ${n} recipient${n === 1 ? '' : 's'}${stage === 'rcpt' ? ' with this one' : ''}, limit ${cond.max}`);
      return n > cond.max;
    }
    case 'sizeOver': {
      const size = cond.fact === 'declaredSize' ? facts.declaredSize : facts.messageSize;
      const label = cond.fact === 'declaredSize' ? 'declaredSizeOver' : 'messageSizeOver';
      if (size === undefined) {
        if (why) why.push(`${label}: ${cond.fact === 'declaredSize' ? 'no SIZE declared' : 'size not known'}`);
        return false;
      }
      if (why) why.push(`${label}: ${size} bytes ${size > cond.max ? '>' : '<='} ${cond.max}`);
      return size > cond.max;
    }
    case 'header': {
      let first: Header | undefined;
      for (const h of facts.headers ?? NO_HEADERS) {
        if (h.name !== cond.name) continue;
        first ??= h;
        for (const re of cond.patterns) {
          if (re.test(h.decoded) || re.test(h.value)) {
            if (why) why.push(`header: ${cond.name} ${show(h.decoded)} matches /${re.source}/`);
            return true;
          }
        }
      }
      if (why) {
        why.push(
          first === undefined
            ? `header: no ${cond.name} header`
            : `header: ${cond.name} ${show(first.decoded)} matches none of ${cond.patterns.map((r) => `/${r.source}/`).join(', ')}`,
        );
      }
      return false;
    }
    case 'attachmentName': {
      const parts = facts.attachments ?? NO_PARTS;
      for (const a of parts) {
        for (const name of a.filenames) {
          const p = cond.list.match(name);
          if (p !== undefined) {
            if (why) why.push(`attachmentName: ${show(name)} matches ${show(p)}`);
            return true;
          }
        }
      }
      if (why) matchAny('attachmentName', parts.flatMap((a) => a.filenames), cond.list, 'attachment with a file name', why);
      return false;
    }
    case 'attachmentType': {
      const parts = facts.attachments ?? NO_PARTS;
      for (const a of parts) {
        const p = cond.list.match(a.contentType);
        if (p !== undefined) {
          if (why) why.push(`attachmentType: ${show(a.contentType)} matches ${show(p)}`);
          return true;
        }
      }
      if (why) matchAny('attachmentType', parts.map((a) => a.contentType), cond.list, 'MIME part', why);
      return false;
    }
    case 'scanIncomplete': {
      const v = facts.scanIncomplete === true;
      if (why) why.push(`scanIncomplete: the MIME scan was ${v ? 'cut short by its limits' : 'complete'}`);
      return v === cond.value;
    }
    case 'time': {
      const t = localClock(facts.now, settings.timezone);
      const ok = inRanges(t.minutes, cond.ranges);
      if (why) why.push(`time: ${clockText(t, settings.timezone)} is ${ok ? '' : 'not '}within ${cond.text}`);
      return ok;
    }
    case 'days': {
      const t = localClock(facts.now, settings.timezone);
      const ok = cond.days.has(t.day);
      if (why) why.push(`days: ${clockText(t, settings.timezone)} is ${ok ? '' : 'not '}on ${cond.text}`);
      return ok;
    }
    case 'builtin':
      return builtinHolds(cond.check, stage, facts, settings, why);
  }
}

/** "alice's addresses [...]": what sender binding compared with, for the trace. */
function ownedText(user: UserFacts): string {
  return `${show(user.name)}'s addresses ${user.addresses.length ? showList(user.addresses) : '(none configured)'}`;
}

/** A built-in check holds when the built-in rule should act (e.g. the sender is NOT owned). */
function builtinHolds(check: BuiltinCheck, stage: PolicyStage, facts: SessionFacts, settings: PolicySettings, why: string[] | undefined): boolean {
  switch (check.type) {
    case 'sender_binding': {
      const user = facts.user;
      if (!user) {
        if (why) why.push('sender_binding: not authenticated, nothing to bind');
        return false;
      }
      const allowed = allowedAddresses(user);
      if (stage === 'mail') {
        const from = facts.from ?? '';
        if (from === '') {
          if (why) why.push(check.allowNullSender ? 'sender_binding: null sender <> is allowed' : 'sender_binding: null sender <> is not allowed for an authenticated user');
          return !check.allowNullSender;
        }
        const p = allowed.match(from);
        if (why) why.push(p !== undefined ? `sender_binding: MAIL FROM ${show(from)} matches ${show(p)} of ${show(user.name)}` : `sender_binding: MAIL FROM ${show(from)} is not among ${ownedText(user)}`);
        return p === undefined;
      }
      // data: every address in every From: header (RFC 5322 §3.6.2 allows a list).
      let seen = false;
      for (const h of facts.headers ?? NO_HEADERS) {
        if (h.name !== 'from') continue;
        seen = true;
        const list = parseAddressList(h.value);
        if (list.invalid.length > 0) {
          if (why) why.push(`sender_binding: From: ${show(list.invalid[0]!.text)} is not an address smtpgate can vouch for (${list.invalid[0]!.reason})`);
          return true;
        }
        if (list.addresses.length === 0) {
          if (why) why.push('sender_binding: From: header has no address');
          return true;
        }
        for (const a of list.addresses) {
          if (allowed.match(a) === undefined) {
            if (why) why.push(`sender_binding: From: ${show(a)} is not among ${ownedText(user)}`);
            return true;
          }
        }
      }
      // A From: past the scan's limits was never looked at: passing the message would let a
      // forged one ride behind enough filler. Not checkable means not allowed.
      if (facts.headersTruncated) {
        if (why) why.push('sender_binding: the header block exceeds the scan limits, so not every From: header could be checked');
        return true;
      }
      if (why) why.push(seen ? `sender_binding: every From: address belongs to ${show(user.name)}` : 'sender_binding: the message has no From: header');
      return false;
    }
    case 'relay_protection': {
      if (facts.authenticated) {
        if (why) why.push('relay_protection: client is authenticated');
        return false;
      }
      if (isTrusted(facts, settings)) {
        if (why) why.push(`relay_protection: client ${facts.ip} is trusted`);
        return false;
      }
      const rcpt = facts.recipient ?? '';
      if (isInternalAddress(rcpt, settings)) {
        if (why) why.push(`relay_protection: ${show(rcpt)} is internal`);
        return false;
      }
      if (why) {
        const reason = hasSenderRouting(rcpt) ? 'has sender-specified routing (%, ! or @ in the local part)' : `domain ${show(domainOf(rcpt))} is not internal`;
        why.push(`relay_protection: ${show(rcpt)} ${reason}, and the client is neither authenticated nor trusted`);
      }
      return true;
    }
    case 'trusted_networks': {
      const t = check.networks ? check.networks.has(facts.ip) : isTrusted(facts, settings);
      if (why) why.push(`trusted_networks: client ${facts.ip} is ${t ? '' : 'not '}in ${check.networks ? "the rule's networks" : 'the trusted networks'}`);
      return t;
    }
    case 'recipient_domains': {
      const rcpt = facts.recipient ?? '';
      const domain = domainOf(rcpt);
      const p = check.allow.match(domain);
      if (p !== undefined) {
        if (why) why.push(`recipient_domains: ${show(domain)} matches ${show(p)}`);
        return false;
      }
      if (check.allowInternal && isInternalAddress(rcpt, settings)) {
        if (why) why.push(`recipient_domains: ${show(rcpt)} is internal`);
        return false;
      }
      if (why) why.push(`recipient_domains: ${show(domain)} is not in [${check.allow.label}]${check.allowInternal ? ' nor internal' : ''}`);
      return true;
    }
    case 'max_recipients': {
      const n = facts.recipients.length;
      if (why) why.push(`max_recipients: ${n} accepted so far, limit ${check.max}`);
      return n >= check.max;
    }
    case 'max_size': {
      const size = stage === 'mail' ? facts.declaredSize : facts.messageSize;
      if (size === undefined) {
        if (why) why.push(`max_size: ${stage === 'mail' ? 'no SIZE declared' : 'size not known'}`);
        return false;
      }
      if (why) why.push(`max_size: ${size} bytes ${size > check.max ? '>' : '<='} ${check.max}`);
      return size > check.max;
    }
  }
}
