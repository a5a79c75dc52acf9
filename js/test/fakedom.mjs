// A small stand-in for the browser DOM, enough to build the view's parts in `node --test`
// (elements, attributes, dataset, classList, events with bubbling, simple attribute selectors).
// Not a browser: canvas drawing is a no-op; the browser tests (tests/test_browser.py) cover the rest.

class FakeEvent {
  constructor(type, init = {}) {
    Object.assign(this, init);
    this.type = type;
    this.bubbles = init.bubbles ?? true;
    this.defaultPrevented = false;
    this.propagationStopped = false;
  }
  preventDefault() {
    this.defaultPrevented = true;
  }
  stopPropagation() {
    this.propagationStopped = true;
  }
}

class TextNode {
  constructor(text) {
    this.nodeType = 3;
    this.data = String(text);
    this.parentNode = null;
  }
  get textContent() {
    return this.data;
  }
}

const camelToData = (name) => "data-" + name.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

class Element {
  constructor(tag, doc) {
    this.nodeType = 1;
    this.tagName = tag.toUpperCase();
    this.ownerDocument = doc;
    this.attributes = new Map();
    this.childNodes = [];
    this.parentNode = null;
    this.listeners = new Map();
    this.style = {};
    this.value = "";
    this.files = null;
    this.clientWidth = 0;
    const el = this;
    this.dataset = new Proxy(
      {},
      {
        get: (_t, key) => (typeof key === "string" ? el.getAttribute(camelToData(key)) ?? undefined : undefined),
        set: (_t, key, value) => {
          el.setAttribute(camelToData(key), value);
          return true;
        },
      },
    );
    this.classList = {
      contains: (c) => el.className.split(/\s+/).includes(c),
      add: (c) => el.classList.toggle(c, true),
      remove: (c) => el.classList.toggle(c, false),
      toggle: (c, force) => {
        const set = new Set(el.className.split(/\s+/).filter(Boolean));
        const on = force === undefined ? !set.has(c) : Boolean(force);
        if (on) set.add(c);
        else set.delete(c);
        el.className = [...set].join(" ");
        return on;
      },
    };
  }
  get children() {
    return this.childNodes.filter((n) => n.nodeType === 1);
  }
  get id() {
    return this.getAttribute("id") || "";
  }
  get className() {
    return this.getAttribute("class") || "";
  }
  set className(v) {
    this.setAttribute("class", v);
  }
  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  hasAttribute(name) {
    return this.attributes.has(name);
  }
  removeAttribute(name) {
    this.attributes.delete(name);
  }
  get textContent() {
    return this.childNodes.map((n) => n.textContent).join("");
  }
  set textContent(v) {
    this.replaceChildren(new TextNode(v ?? ""));
  }
  append(...nodes) {
    for (const node of nodes) {
      const n = typeof node === "string" ? new TextNode(node) : node;
      if (n.parentNode) n.parentNode.childNodes = n.parentNode.childNodes.filter((c) => c !== n);
      n.parentNode = this;
      this.childNodes.push(n);
    }
  }
  replaceChildren(...nodes) {
    for (const n of this.childNodes) n.parentNode = null;
    this.childNodes = [];
    this.append(...nodes);
  }
  remove() {
    if (this.parentNode) this.parentNode.childNodes = this.parentNode.childNodes.filter((c) => c !== this);
    this.parentNode = null;
  }
  contains(node) {
    for (let n = node; n; n = n.parentNode) if (n === this) return true;
    return false;
  }
  matches(selector) {
    const m = selector.match(/^([a-z0-9]*)((?:\[[^\]]+\])*)$/i);
    if (!m) throw new Error(`fakedom: unsupported selector ${selector}`);
    if (m[1] && this.tagName !== m[1].toUpperCase()) return false;
    for (const [, name, value] of m[2].matchAll(/\[([^=\]]+)(?:="?([^"\]]*)"?)?\]/g)) {
      if (value === undefined ? !this.hasAttribute(name) : this.getAttribute(name) !== value) return false;
    }
    return true;
  }
  closest(selector) {
    for (let n = this; n && n.nodeType === 1; n = n.parentNode) if (n.matches(selector)) return n;
    return null;
  }
  querySelectorAll(selector) {
    const out = [];
    const walk = (n) => {
      for (const c of n.children) {
        if (c.matches(selector)) out.push(c);
        walk(c);
      }
    };
    walk(this);
    return out;
  }
  querySelector(selector) {
    return this.querySelectorAll(selector)[0] || null;
  }
  /** The first descendant with data-testid = `id`. */
  byTestId(id) {
    return this.querySelector(`[data-testid="${id}"]`);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  removeEventListener(type, fn) {
    this.listeners.set(type, (this.listeners.get(type) || []).filter((f) => f !== fn));
  }
  dispatchEvent(event) {
    event.target = event.target || this;
    for (let n = this; n; n = event.bubbles ? n.parentNode : null) {
      event.currentTarget = n;
      for (const fn of [...(n.listeners?.get(event.type) || [])]) fn(event);
      if (event.propagationStopped) break;
    }
    return !event.defaultPrevented;
  }
  click() {
    if (this.disabled) return;
    this.dispatchEvent(new FakeEvent("click"));
    if (this.tagName === "BUTTON" && this.getAttribute("type") === "submit") {
      const form = this.closest("form");
      if (form) form.dispatchEvent(new FakeEvent("submit"));
    }
  }
  focus() {
    this.ownerDocument.activeElement = this;
  }
  getBoundingClientRect() {
    return { left: 0, top: 0, width: 100, height: 100 };
  }
  toBlob(callback, type) {
    callback({ type, arrayBuffer: async () => new ArrayBuffer(16) }); // canvas encoding: 16 placeholder bytes
  }
  getContext() {
    const image = (w, hgt) => ({ data: new Uint8ClampedArray(w * hgt * 4), width: w, height: hgt });
    return new Proxy({ getImageData: (_x, _y, w, hgt) => image(w, hgt) }, { get: (t, k) => t[k] || (() => {}) });
  }
}

for (const prop of ["hidden", "disabled", "open"]) {
  Object.defineProperty(Element.prototype, prop, {
    get() {
      return this.hasAttribute(prop);
    },
    set(v) {
      if (v) this.setAttribute(prop, "");
      else this.removeAttribute(prop);
    },
  });
}

/** Install `document` and `window` on globalThis; returns the document. */
export function installDom() {
  const doc = {
    activeElement: null,
    createElement: (tag) => new Element(tag, doc),
    createTextNode: (text) => new TextNode(text),
  };
  doc.body = doc.createElement("body");
  globalThis.document = doc;
  globalThis.window = { devicePixelRatio: 1 };
  return doc;
}

/** An anywidget model: get/set/save_changes, on/off, send (recorded in `sent`), and `emit` for the kernel's side. */
export function fakeModel(values = {}) {
  const traits = {
    k: 8,
    max_side: 2048,
    filters: {},
    status: {},
    results: [],
    thumbnails: [],
    thumbnail_urls: [],
    query_name: "",
    query_preview: new DataView(new ArrayBuffer(0)),
    history: [],
    history_previews: [],
    history_id: "",
    query_image_key: "",
    dashboard_link: "",
    verdict: "",
    ...values,
  };
  const handlers = new Map();
  return {
    sent: [],
    get: (name) => traits[name],
    set(name, value) {
      traits[name] = value;
    },
    save_changes() {},
    on(name, fn) {
      if (!handlers.has(name)) handlers.set(name, []);
      handlers.get(name).push(fn);
    },
    off(name, fn) {
      handlers.set(name, (handlers.get(name) || []).filter((f) => f !== fn));
    },
    send(content, _callbacks, buffers) {
      this.sent.push({ content, buffers });
    },
    /** The kernel changes traits (one message): change events fire for each. */
    update(changes) {
      Object.assign(traits, changes);
      for (const name of Object.keys(changes)) for (const fn of handlers.get(`change:${name}`) || []) fn();
    },
    /** The kernel sends a custom message. */
    emit(content, buffers = []) {
      for (const fn of handlers.get("msg:custom") || []) fn(content, buffers);
    },
  };
}

export { FakeEvent };

/** Let queued microtasks (the view's batched renders) run. */
export const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
