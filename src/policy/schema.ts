/**
 * The shape of a policy file, as zod checks it: which keys exist and what type each holds.
 * Meaning (a CIDR that parses, a reply code that suits the action, a condition a stage can
 * know) is checked when load.ts compiles the rules, with the same file/line/path reporting.
 *
 *   internalDomains: [corp.example]        # settings: each in at most one file
 *   trustedNetworks: [10.0.0.0/8]
 *   timezone: Europe/Berlin
 *   default: accept                       # or per stage: {rcpt: reject}
 *   relayProtection: on
 *   rules:
 *     - name: no-executables
 *       stage: data
 *       when: { attachmentName: ["*.exe", "*.js"] }
 *       action: reject
 *       reply: "550 5.7.1 Executable attachments are not accepted"
 *
 * A file may also be just the list of rules.
 */
import { z } from 'zod';
import { ACTIONS, BUILTIN_TYPES, LIMIT_KEYS, POLICY_STAGES } from './types.js';

/** One value or a list of them; the compiler turns both into a list. */
const oneOrMany = z.union([z.string(), z.array(z.string())]);
const stage = z.enum(POLICY_STAGES);
const sizeValue = z.union([z.string(), z.number()]);

export interface RawCondition {
  clientIp?: string | string[];
  listener?: string | string[];
  tls?: boolean;
  tlsVersion?: string | string[];
  authenticated?: boolean;
  authMethod?: string | string[];
  trusted?: boolean;
  user?: string | string[];
  group?: string | string[];
  helo?: string | string[];
  sender?: string | string[];
  senderDomain?: string | string[];
  senderInternal?: boolean;
  recipient?: string | string[];
  recipientDomain?: string | string[];
  recipientInternal?: boolean;
  recipientsOver?: number;
  declaredSizeOver?: string | number;
  messageSizeOver?: string | number;
  header?: Record<string, string | string[]>;
  attachmentName?: string | string[];
  attachmentType?: string | string[];
  scanIncomplete?: boolean;
  time?: string | string[];
  days?: string | string[];
  not?: RawCondition;
  any?: RawCondition[];
  all?: RawCondition[];
}

export const conditionSchema: z.ZodType<RawCondition> = z.lazy(() =>
  z
    .object({
      clientIp: oneOrMany.optional(),
      listener: oneOrMany.optional(),
      tls: z.boolean().optional(),
      tlsVersion: oneOrMany.optional(),
      authenticated: z.boolean().optional(),
      authMethod: oneOrMany.optional(),
      trusted: z.boolean().optional(),
      user: oneOrMany.optional(),
      group: oneOrMany.optional(),
      helo: oneOrMany.optional(),
      sender: oneOrMany.optional(),
      senderDomain: oneOrMany.optional(),
      senderInternal: z.boolean().optional(),
      recipient: oneOrMany.optional(),
      recipientDomain: oneOrMany.optional(),
      recipientInternal: z.boolean().optional(),
      recipientsOver: z.number().optional(),
      declaredSizeOver: sizeValue.optional(),
      messageSizeOver: sizeValue.optional(),
      header: z.record(z.string(), oneOrMany).optional(),
      attachmentName: oneOrMany.optional(),
      attachmentType: oneOrMany.optional(),
      scanIncomplete: z.boolean().optional(),
      time: oneOrMany.optional(),
      days: oneOrMany.optional(),
      not: conditionSchema.optional(),
      any: z.array(conditionSchema).optional(),
      all: z.array(conditionSchema).optional(),
    })
    .strict(),
);

/** Condition keys in the order the docs list them; also the "did you mean" candidates. */
export const CONDITION_KEYS = [
  'clientIp', 'listener', 'tls', 'tlsVersion', 'authenticated', 'authMethod', 'trusted', 'user', 'group', 'helo',
  'sender', 'senderDomain', 'senderInternal', 'recipient', 'recipientDomain', 'recipientInternal', 'recipientsOver',
  'declaredSizeOver', 'messageSizeOver', 'header', 'attachmentName', 'attachmentType', 'scanIncomplete', 'time', 'days',
  'not', 'any', 'all',
] as const;

export const ruleSchema = z
  .object({
    name: z.string(),
    description: z.string().optional(),
    stage: z.union([stage, z.array(stage)]).optional(),
    type: z.enum(BUILTIN_TYPES).optional(),
    mode: z.enum(['enforce', 'audit', 'off']).optional(),
    when: conditionSchema.optional(),
    action: z.enum(ACTIONS).optional(),
    reply: z.string().optional(),
    header: oneOrMany.optional(),
    rate: z.string().optional(),
    per: z.enum(LIMIT_KEYS).optional(),
    max: sizeValue.optional(),
    allow: oneOrMany.optional(),
    allowInternal: z.boolean().optional(),
    allowNullSender: z.boolean().optional(),
    networks: oneOrMany.optional(),
  })
  .strict();

export type RawRule = z.infer<typeof ruleSchema>;
export const RULE_KEYS = Object.keys(ruleSchema.shape);

const defaultAction = z.enum(['accept', 'reject', 'tempfail']);

export const fileSchema = z
  .object({
    internalDomains: oneOrMany.optional(),
    trustedNetworks: oneOrMany.optional(),
    timezone: z.string().optional(),
    default: z
      .union([
        defaultAction,
        z
          .object({
            connect: defaultAction.optional(),
            auth: defaultAction.optional(),
            mail: defaultAction.optional(),
            rcpt: defaultAction.optional(),
            data: defaultAction.optional(),
          })
          .strict(),
      ])
      .optional(),
    relayProtection: z.union([z.boolean(), z.enum(['on', 'off'])]).optional(),
    // Each rule is checked on its own (ruleSchema), so one bad rule doesn't hide the others' problems.
    rules: z.array(z.unknown()).optional(),
  })
  .strict();

export type RawPolicyFile = Omit<z.infer<typeof fileSchema>, 'rules'>;
export const FILE_KEYS = Object.keys(fileSchema.shape);
export const SETTING_KEYS = ['internalDomains', 'trustedNetworks', 'timezone', 'default', 'relayProtection'] as const;
export type SettingKey = (typeof SETTING_KEYS)[number];
