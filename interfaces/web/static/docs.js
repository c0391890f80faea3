// Swagger UI on the served OpenAPI document, from Sandbar's own files (no CDN), with no
// call to any other host (no validator badge).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
