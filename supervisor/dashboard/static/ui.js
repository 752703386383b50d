// What every page builds with: links, cards, tables, and two timing helpers.
import { h } from "./format.js";

export const enc = encodeURIComponent;

export const isJob = (s) => Boolean(s.schedule);
export const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);
export const section = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), ...children);
export const empty = (text) => h("p", { class: "empty muted" }, text);
export const result = () => h("p", { class: "result", role: "status", "aria-live": "polite" });

export function table(headers, rows, attrs = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))), h("tbody", {}, rows)),
  );
}

export function uptimeOf(s) {
  if (s.uptime === null || s.uptime === undefined || !s.pid) return null;
  return s.uptime + (Date.now() - s.fetchedAt) / 1000;
}

export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

// Ticks the uptime cells on screen (no request: the page's own clock).
export function ticker(update) {
  const id = setInterval(update, 1000);
  return () => clearInterval(id);
}
