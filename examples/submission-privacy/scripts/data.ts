import type { DataContext, HeaderEdit, Verdict } from "postern";

// Fields a mail program or the laptop's own MTA adds that name the machine, its address or its software.
const PRIVATE_FIELDS = ["Received", "X-Originating-IP", "X-Mailer", "User-Agent"];

// At the end of DATA: strip them, and say instead which certificate (and so which account) sent the
// message. Postern's own Received header (the one it adds, first) is not touched by any edit.
export default function data(ctx: DataContext): Verdict {
  const connection = ctx.connection;
  // Written for Postern's submission listener: a Postfix policy request's certificate has too little in it.
  if (connection.source !== "smtp") throw new Error("not a client of the submission listener"); // fails closed (4xx)
  const cert = connection.clientCertificate!; // clientCertificates: require
  const identity = connection.certificateIdentity ?? "unknown";
  // The From: is already bound to the certificate's account (senderLogin, before this script runs).
  const edits: HeaderEdit[] = PRIVATE_FIELDS.map((name) => ({ op: "remove", name }));
  edits.push(
    { op: "set", name: "X-Postern-Client-Cert", value: cert.fingerprint.sha256 },
    // A client's own claim of our results must not survive next to ours.
    { op: "remove", name: "Authentication-Results" },
    { op: "add", name: "Authentication-Results", value: `submit.example.com; auth=pass (TLS client certificate) smtp.auth=${identity}` },
  );
  return accept({ headers: edits });
}
